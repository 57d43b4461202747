"""onnx-cp: make CNNs faster in onnxruntime by rewriting their Conv, Gemm and MatMul nodes as low-rank
decompositions (CP first, Tucker-2, SVD, GKPD, low-rank-factor CP), chosen per layer by measured speed.

    import onnx_cp
    fast = onnx_cp.rewrite("model.onnx", onnx_cp.RewriteConfig(ranks=(64,)))
"""
from onnx_cp.config import RankRule, RewriteConfig, parse_rank
from onnx_cp.errors import OnnxCpError
from onnx_cp.inspect import inspect_model
from onnx_cp.model_io import load_model, save_model
from onnx_cp.ranks.options import RankSelection
from onnx_cp.rewrite import RewriteResult, rewrite, rewrite_with_report

__all__ = [
    "OnnxCpError", "RankRule", "RankSelection", "RewriteConfig", "RewriteResult", "inspect_model", "load_model",
    "parse_rank", "rewrite", "rewrite_with_report", "save_model", "cp_nls", "cp_als", "finetune",
    "finetune_with_report",
]


def __getattr__(name):
    # The solvers load on first use, so `import onnx_cp` stays light.
    if name in ("finetune", "finetune_with_report"):  # callable package; torch loads on first use
        import onnx_cp.finetune

        return onnx_cp.finetune if name == "finetune" else onnx_cp.finetune.finetune_with_report
    if name in ("cp_nls", "cp_als"):
        from onnx_cp import solver

        return getattr(solver, name)
    raise AttributeError(f"module 'onnx_cp' has no attribute {name!r}")
