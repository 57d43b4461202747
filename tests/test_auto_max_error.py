"""--decomposition auto with --max-error: per layer, the cheapest decomposition within the bound."""
from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from builders import cp_kernel, float_model, relative_difference, run
from test_auto_budget import faster_everywhere
from onnx_cp import RankSelection, RewriteConfig, rewrite_with_report


def low_rank_model(seed=0):
    """x (1x8x10x10) -> 3x3 Conv 8->32 of CP rank 3 -> Relu -> 3x3 Conv 32->32 of Tucker-2 ranks
    (8, 8) -> Relu -> 1x1 Conv 32->48 of matrix rank 6 -> Relu -> Flatten -> Gemm 4800->24
    (transB) of rank 4 -> y. Each layer is exact in one decomposition at a low rank."""
    rng = np.random.default_rng(seed)
    cp_w, _ = cp_kernel(rng, (32, 8, 3, 3), 3)
    core = rng.standard_normal((8, 8, 3, 3))
    u, v = (np.linalg.qr(rng.standard_normal((32, 8)))[0] for _ in range(2))
    tucker_w = np.einsum("abhw,oa,ib->oihw", core, u, v)
    svd_w = (rng.standard_normal((48, 6)) @ rng.standard_normal((6, 32)))[:, :, None, None]
    fc_w = rng.standard_normal((24, 4)) @ rng.standard_normal((4, 4800)) * 0.01
    weights = {"cp_w": cp_w, "tucker_w": tucker_w * 0.3, "svd_w": svd_w * 0.2, "fc_w": fc_w}
    inits = [numpy_helper.from_array(np.asarray(w, np.float32), n) for n, w in weights.items()]
    nodes = []
    x = "x"
    for name, weight, k in (("conv_cp", "cp_w", 3), ("conv_tucker", "tucker_w", 3), ("conv_svd", "svd_w", 1)):
        nodes += [helper.make_node("Conv", [x, weight], [f"{name}_out"], name=name, kernel_shape=[k, k],
                                   pads=[k // 2] * 4),
                  helper.make_node("Relu", [f"{name}_out"], [f"{name}_relu"], name=f"{name}_relu")]
        x = f"{name}_relu"
    nodes += [helper.make_node("Flatten", [x], ["flat"], name="flatten"),
              helper.make_node("Gemm", ["flat", "fc_w"], ["y"], name="fc", transB=1)]
    return float_model("low_rank", nodes, inits, (1, 8, 10, 10), (1, 24))


@pytest.mark.parametrize("jobs", [1, 2])  # layers searched in process, or side by side in workers
def test_auto_max_error_picks_each_layers_exact_decomposition(jobs):
    model = low_rank_model()
    config = RewriteConfig(selection=RankSelection(max_error=1e-3), decomposition="auto", max_iter=300,
                           stabilize="never", jobs=jobs)
    result = rewrite_with_report(model, config, timer=faster_everywhere)
    onnx.checker.check_model(result.model, full_check=True)
    rows = {l.node: l for l in result.report.layers}
    assert {n: rows[n].decomposition for n in ("conv_cp", "conv_tucker", "conv_svd", "fc")} == \
        {"conv_cp": "cp", "conv_tucker": "tucker2", "conv_svd": "svd", "fc": "svd"}
    assert all(rows[n].status == "rewritten" for n in rows)
    assert rows["conv_cp"].rank == 3 and rows["conv_tucker"].rank == "8x8"
    for row in rows.values():
        assert row.rel_error <= 1e-3 and row.macs_after < row.macs_before
    summary = result.report.rank_selection
    assert summary["max_error"] == 1e-3 and summary["decompositions"] == {"cp": 1, "tucker2": 1, "svd": 2}
    x = np.random.default_rng(1).standard_normal((1, 8, 10, 10)).astype(np.float32)
    assert relative_difference(run(model, {"x": x})[0], run(result.model, {"x": x})[0]) < 1e-3


def test_auto_max_error_keeps_a_layer_no_decomposition_reaches():
    config = RewriteConfig(selection=RankSelection(max_error=1e-9), decomposition="auto", max_iter=20,
                           stabilize="never", layers=("conv_tucker",))
    result = rewrite_with_report(low_rank_model(seed=1), config, timer=faster_everywhere)
    row = next(l for l in result.report.layers if l.node == "conv_tucker")
    assert row.status != "rewritten"
    assert "no rank reaches kernel error 1e-09" in row.reason and "tucker2 rank" in row.reason
