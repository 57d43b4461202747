"""The batches a loader yields: ``x`` alone, ``(x,)`` or ``(x, y, ...)``, as tensors or numpy arrays."""
from __future__ import annotations

from onnx_cp.errors import OnnxCpError


def first_batch(loader):
    """(x on the CPU, y or None) of the loader's first batch; refuses loaders that cannot run each epoch."""
    if iter(loader) is loader:
        raise OnnxCpError("the loader is a one-pass iterator; pass something that can be iterated once per "
                          "epoch, such as a torch DataLoader or a list of batches")
    try:
        batch = next(iter(loader))
    except StopIteration:
        raise OnnxCpError("the training loader yields no batches; pass at least one sample") from None
    x, y = split_batch(batch)
    return x.detach().cpu(), y


def split_batch(batch):
    """(x, y or None) from a tensor, an (x,) / (x, y, ...) tuple or list, or a numpy array."""
    import torch

    if isinstance(batch, (tuple, list)):
        if not batch:
            raise OnnxCpError("the loader yielded an empty batch; yield x or (x, y)")
        x, y = batch[0], batch[1] if len(batch) > 1 else None
    else:
        x, y = batch, None
    x = torch.as_tensor(x)
    if not torch.is_floating_point(x):
        raise OnnxCpError(f"the loader yields images of dtype {x.dtype}; scale them to float the way "
                          "the model expects (e.g. x.float() / 255)")
    if y is not None:
        y = torch.as_tensor(y)
        if torch.is_floating_point(y) or y.ndim != 1:
            raise OnnxCpError(f"the loader yields labels of dtype {y.dtype} and shape {tuple(y.shape)}; "
                              "yield one integer class index per image")
    return x.float(), y


def batch_count(loader) -> int | None:
    """Batches per epoch, or None when the loader has no length."""
    try:
        return len(loader)
    except TypeError:
        return None
