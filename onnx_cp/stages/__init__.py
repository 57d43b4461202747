"""The stages of a rewrite, one module each, run in this order by ``onnx_cp.rewrite``:

discover (load, sites, selection, measurement, calibration data) -> plan (ranks) -> forms
(candidates timed with placeholder factors) -> fit -> assemble (splice, the chosen mix timed
together) -> recover (--calib: layer by layer) -> distill (--calib: the whole model's outputs) ->
quantize (--quantize) -> hold (--max-drop) -> verify (the written model against the input) -> report.

Each stage reads and extends one ``context.Rewrite``; every selected layer is one
``context.LayerRecord`` from its plan to its report row.
"""
