"""Calibration-driven rewriting (``RewriteConfig.calib``, ``--calib``): data-aware fits and layer-wise recovery.

One job per module, all services the orchestrator (``onnx_cp.rewrite``) calls:

- ``patches``: a Conv's receptive fields at sampled output positions, and the CP chain on them;
- ``activations``: intermediate tensors of a model in onnxruntime, batched over the feeds;
- ``follow``: the elementwise activation that follows a Conv (Relu, SiLU, ...);
- ``statistics``: a layer's input statistics (channel and spatial second moments);
- ``weighted_fit``: CP fits that weight the kernel error by those statistics;
- ``recovery``: training one layer's CP chain (factors and bias) on real activations;
- ``layerwise``: recovery of every rewritten layer in graph order, fed by the rewritten prefix.

Nothing heavy is imported here: torch and onnxruntime load where they are used.
"""
