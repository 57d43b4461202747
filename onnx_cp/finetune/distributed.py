"""Data-parallel fine-tuning with torch.distributed: one process per worker, each training on its
share of the data, gradients averaged by DistributedDataParallel.

Two ways in, one group:

- ``launch(fn, args, nproc)`` starts ``nproc`` workers on this machine with torch's elastic
  launcher (what ``torchrun --standalone`` does) and returns rank 0's result. A worker that fails
  stops the others, and ``launch`` raises one OnnxCpError saying which worker failed and why.
- Under ``torchrun`` (one machine or several) the environment describes the group: RANK,
  WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT. ``world_from_env`` reads it.

Inside a worker, ``process_group(device)`` joins that group (gloo on the CPU, nccl on CUDA with
one GPU per worker) and turns a lost peer into an OnnxCpError; ``finetune_with_report`` sees the
group and trains through ``data_parallel``, agreeing with the other workers on figures
(``summed``) and on stopping (``anyone``). Outside a group all of these are the identity, and
the world is one process.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Sequence

from onnx_cp.errors import OnnxCpError, marked, param, spelled
from onnx_cp.finetune._deps import require_torch

GROUP_ENV = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")
# A worker that loses a peer waits this long before failing itself, so that the launcher reports
# the worker that failed first (it stops this one meanwhile).
PEER_GRACE_S = 5.0
_QUIET_LOGGERS = ("torch.distributed", "torch.multiprocessing")
_PEER_SIGNS = ("Connection closed", "Connection reset", "Broken pipe", "gloo", "NCCL")


@dataclass(frozen=True)
class World:
    """Where this process stands: its rank among ``size`` workers, and on its machine."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def leader(self) -> bool:
        """Rank 0: the worker that reports and writes."""
        return self.rank == 0


class WorkerError(Exception):
    """An OnnxCpError on its way from a worker to ``launch`` (its text is JSON)."""


def world_from_env(environ=None) -> World | None:
    """The group that torchrun (or ``launch``) describes in the environment; None outside one."""
    env = os.environ if environ is None else environ
    if not all(k in env for k in GROUP_ENV):
        return None
    try:
        size = int(env["WORLD_SIZE"])
        world = World(int(env["RANK"]), size, int(env.get("LOCAL_RANK", env["RANK"])),
                      int(env.get("LOCAL_WORLD_SIZE", size)))
    except ValueError:
        raise OnnxCpError("the torch.distributed environment is malformed (RANK=%r, WORLD_SIZE=%r, LOCAL_RANK=%r); "
                          "start the command with torchrun, or unset those variables"
                          % (env["RANK"], env["WORLD_SIZE"], env.get("LOCAL_RANK")), usage=True) from None
    if not (0 <= world.rank < world.size and 0 <= world.local_rank < world.local_size <= world.size):
        raise OnnxCpError(f"the torch.distributed environment is inconsistent ({world}); start the command with "
                          "torchrun, or unset RANK and WORLD_SIZE", usage=True)
    return world


def current_world() -> World:
    """The initialized group as a World; a world of one when there is none."""
    dist = _dist()
    if dist is None or not dist.is_initialized():
        return World()
    size = dist.get_world_size()
    env = os.environ
    return World(dist.get_rank(), size, int(env.get("LOCAL_RANK", 0)), int(env.get("LOCAL_WORLD_SIZE", size)))


def pick_device(requested: str | None, world: World):
    """The torch device of this worker: ``requested`` ("cpu", "cuda", "cuda:1"; None: CUDA when
    torch sees it, else the CPU). With several workers on a machine, "cuda" means GPU LOCAL_RANK."""
    torch, _ = require_torch()
    name = requested or ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise OnnxCpError(f"{param('device', repr(name))}: not a torch device; give cpu, cuda or cuda:N",
                          usage=True) from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise OnnxCpError(f"device {name!r}: torch sees no CUDA device; use {_device('cpu')}")
    if world.local_size == 1:
        return device
    if device.index is not None:
        raise OnnxCpError(f"{_device(name)} would put all {world.local_size} workers of this machine on one GPU; "
                          f"give {_device('cuda')} (worker k uses GPU k)", usage=True)
    count = torch.cuda.device_count()
    if world.local_size > count:
        raise OnnxCpError(f"{world.local_size} workers on this machine but torch sees {count} GPU(s); start at "
                          f"most {count} ({spelled(_TORCHRUN_NPROC, '--nproc or ' + _TORCHRUN_NPROC)}) or give "
                          f"{_device('cpu')}", usage=True)
    return torch.device("cuda", world.local_rank)


def _device(name: str) -> str:
    return param("device", repr(name), cli=name)


_TORCHRUN_NPROC = "torchrun's --nproc-per-node"


def threads_per_worker(local_size: int) -> int:
    """This machine's cores shared out evenly among its workers (at least one each)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    return max(1, cores // max(1, local_size))


def launch(fn: Callable, args: Sequence, nproc: int) -> Any:
    """Run ``fn(*args)`` in ``nproc`` workers on this machine, joined in one group; return rank 0's result.

    ``fn`` must be importable by name (a module-level function): the workers are new processes.
    Each finds the group in its environment (``world_from_env``, ``process_group``). When a worker
    fails, the others are stopped and OnnxCpError names the worker and its error.
    """
    if not isinstance(nproc, int) or nproc < 1:
        raise OnnxCpError(f"nproc must be a positive number of workers, got {nproc!r}", usage=True)
    require_torch()
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    # One machine, no restarts, a free port: what torchrun --standalone does.
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=nproc, run_id=f"onnx-cp-{uuid.uuid4().hex}",
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, start_method="spawn",
                          monitor_interval=0.1)
    with _quiet(_QUIET_LOGGERS):
        try:
            results = elastic_launch(config, _entry)(fn, tuple(args))
        except ChildFailedError as exc:
            raise _failure(exc, nproc) from None
        except SignalException as exc:  # the launcher stopped its workers on the way out
            if exc.sigval == signal.SIGINT:
                raise KeyboardInterrupt from None
            raise OnnxCpError(f"stopped by {exc.sigval.name}, with the {nproc} workers") from None
    return results[0]


@contextmanager
def process_group(device: str | None = None):
    """Join the group the environment describes; yields ``(World, torch device)``.

    Without such an environment nothing is joined and the world is this process alone. A peer lost
    on the way (it failed or was stopped) becomes an OnnxCpError after ``PEER_GRACE_S``.
    """
    torch, _ = require_torch()
    world = world_from_env()
    if world is None:
        yield World(), pick_device(device, World())
        return
    import torch.distributed as dist

    dev = pick_device(device, world)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    where = f"{os.environ['MASTER_ADDR']}:{os.environ['MASTER_PORT']}"
    try:
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", init_method="env://",
                                rank=world.rank, world_size=world.size)
    except (RuntimeError, ValueError) as exc:
        raise OnnxCpError(f"cannot join the group of {world.size} workers at {where} ({_first_line(exc)}); start "
                          "the same command on every machine, with an address and port all of them reach") from None
    try:
        yield world, dev
    except OnnxCpError:
        raise
    except Exception as exc:
        if not _lost_peer(exc):
            raise
        time.sleep(PEER_GRACE_S)
        raise OnnxCpError(f"worker {world.rank} of {world.size} lost contact with the others "
                          f"({_first_line(exc)[:200]}); the worker that stopped first says why") from None
    finally:
        dist.destroy_process_group()


def data_parallel(module, device):
    """``module`` wrapped in DistributedDataParallel inside a group of several; as it is otherwise."""
    if current_world().size == 1:
        return module
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def summed(values: Sequence[float], device) -> list[float]:
    """Each value summed over the group's workers (the values themselves outside a group)."""
    if current_world().size == 1:
        return [float(v) for v in values]
    import torch
    import torch.distributed as dist

    tensor = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def anyone(flag: bool, device) -> bool:
    """True when ``flag`` is True on any worker of the group."""
    return bool(flag) if current_world().size == 1 else summed([bool(flag)], device)[0] > 0


def _entry(fn: Callable, args: tuple):
    """A worker's body under ``launch``: an OnnxCpError crosses to the launcher as its message."""
    try:
        return fn(*args)
    except OnnxCpError as exc:
        raise WorkerError(json.dumps({"message": marked(exc), "usage": exc.usage})) from None


def _failure(exc, nproc: int) -> OnnxCpError:
    """One OnnxCpError for the first worker that failed."""
    rank, failure = exc.get_first_failure()
    message = failure.message.get("message", "") if isinstance(failure.message, dict) else str(failure.message)
    who = f"fine-tuning worker {rank} of {nproc}"
    tag = f"{WorkerError.__name__}: "
    if message.startswith(tag):
        error = json.loads(message[len(tag):])
        return OnnxCpError(f"{who}: {error['message']}", usage=error["usage"])
    if failure.exitcode < 0:
        signal = failure.signal_name()
        hint = (" (the out-of-memory killer sends it: lower --batch-size or --nproc)" if signal == "SIGKILL" else "")
        return OnnxCpError(f"{who} was killed by {signal}{hint}; the other workers were stopped")
    if message and not message.startswith("To enable traceback"):
        return OnnxCpError(f"{who} failed ({_first_line(message)[:300]}); the other workers were stopped; this is "
                           "a bug: rerun with --nproc 1 and 'onnx-cp --debug' for the traceback and report it")
    return OnnxCpError(f"{who} exited with status {failure.exitcode}; the other workers were stopped")


def _lost_peer(exc: BaseException) -> bool:
    import torch.distributed as dist

    return isinstance(exc, dist.DistError) or (isinstance(exc, RuntimeError)
                                                and any(s in str(exc) for s in _PEER_SIGNS))


def _dist():
    try:
        import torch.distributed as dist
    except ImportError:
        return None
    return dist if dist.is_available() else None


@contextmanager
def _quiet(names: Sequence[str]):
    """torch's launcher logs every failure with tracebacks; ``launch`` reports it in one line instead."""
    # torch's elastic modules set a level on each of their loggers: quiet every one, not the parents.
    loggers = [logging.getLogger(n) for n in list(logging.root.manager.loggerDict)
               if any(n == p or n.startswith(p + ".") for p in names)]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def _first_line(exc) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
