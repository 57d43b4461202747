"""CP factors -> ONNX nodes: kept for its importers; the code lives in onnx_cp.decompositions.cp."""
from onnx_cp.decompositions.cp import REALIZATIONS, STAGES_CP3, STAGES_CP4, realize
from onnx_cp.decompositions.nodes import Realization

__all__ = ["REALIZATIONS", "STAGES_CP3", "STAGES_CP4", "Realization", "realize"]
