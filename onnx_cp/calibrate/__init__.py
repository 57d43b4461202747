"""Calibration-driven rewriting (``RewriteConfig.calib``, ``--calib``): data-aware fits and layer-wise recovery.

One job per module, all services the rewrite's stages (``onnx_cp.stages``) call:

- ``data``: the calibration samples, read, checked and split once;
- ``session``: the ``Calibration`` of one rewrite: layers observed once, recovery, the report's entry;
- ``patches``: a Conv's receptive fields at sampled output positions;
- ``activations``: intermediate tensors of a model in onnxruntime, batched over the feeds;
- ``observe``: one pass of the original model: each layer's input statistics and output targets;
- ``follow``: the elementwise activation that follows a Conv (Relu, SiLU, ...);
- ``statistics``: accumulating a layer's input statistics (decompositions.moments holds them);
- ``recovery``: training one layer's factors and bias on real activations, whatever its decomposition;
- ``layerwise``: recovery of every rewritten layer in graph order, fed by the rewritten prefix;
- ``block``: training a CP layer further on the output of the Conv after it.

Nothing heavy is imported here: torch and onnxruntime load where they are used.
"""
