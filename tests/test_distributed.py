"""Data-parallel fine-tuning: ``onnx-cp finetune --nproc N`` (torch's elastic launcher, gloo on the
CPU) and the same command under torchrun; the launcher's failure handling on its own.

The tiny network, as in test_finetune (built in torch, exported, rewritten by onnx-cp at rank 2):

    x (N x 3 x 8 x 8) -> Conv 3x3 3->8 -> Relu -> Conv 3x3 8->8 -> Relu -> GlobalAveragePool
      -> Flatten -> Gemm 8->3 -> logits
"""
import io
import json
import os
import signal
import socket
import subprocess
import sys
import warnings

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnx_cp import OnnxCpError, RewriteConfig, rewrite
from onnx_cp.finetune.distributed import World, launch, world_from_env

pytestmark = pytest.mark.torch


@pytest.fixture(scope="module")
def torch():
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnx2torch")
    return torch


@pytest.fixture(scope="module")
def files(torch, tmp_path_factory):
    """orig.onnx, fast.onnx (rewritten), train.npz (64 labelled images) and val.npz in one folder."""
    folder = tmp_path_factory.mktemp("inputs")
    torch.manual_seed(0)
    nn = torch.nn
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (torch.zeros(1, 3, 8, 8),), buffer, dynamo=False, opset_version=17,
                          input_names=["x"], output_names=["logits"],
                          dynamic_axes={"x": {0: "batch"}, "logits": {0: "batch"}})
    original = onnx.load_from_string(buffer.getvalue())
    onnx.save(original, folder / "orig.onnx")
    onnx.save(rewrite(original, RewriteConfig(ranks=(2,), realize="cp4", max_iter=50, jobs=1)), folder / "fast.onnx")
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 3, 8, 8)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    x[np.arange(64), y] += 1.0  # the class is the brightest channel
    np.savez(folder / "train.npz", x=x, y=y.astype(np.int64))
    np.savez(folder / "val.npz", x=x[:32], y=y[:32].astype(np.int64))
    x[5] = np.nan  # one poisoned sample: whichever worker draws it sees its loss turn NaN
    np.savez(folder / "poisoned.npz", x=x, y=y.astype(np.int64))
    return folder


def finetune_args(files, out, *extra, data="train.npz"):
    return [str(files / "fast.onnx"), "--data", str(files / data), "--val", str(files / "val.npz"),
            "--teacher", str(files / "orig.onnx"), "--epochs", "2", "--batch-size", "16", "--lr", "0.01",
            "-q", "-o", str(out / "tuned.onnx"), "--report", str(out / "report.json"), *extra]


def weights(path):
    return [onnx.numpy_helper.to_array(t) for t in onnx.load(path).graph.initializer]


def test_world_from_env_reads_torchruns_variables():
    env = {"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "MASTER_ADDR": "10.0.0.1",
           "MASTER_PORT": "29500"}
    assert world_from_env(env) == World(rank=3, size=4, local_rank=1, local_size=2)
    assert not world_from_env(env).leader and World().leader
    assert world_from_env({"RANK": "0"}) is None  # not a torch.distributed launch
    with pytest.raises(OnnxCpError, match="malformed"):
        world_from_env({**env, "RANK": "x"})
    with pytest.raises(OnnxCpError, match="inconsistent"):
        world_from_env({**env, "RANK": "4"})


@pytest.mark.parametrize("extra, message", [
    (["--nproc", "0"], "--nproc must be at least 1 (the number of training processes), got 0"),
    (["--nproc", "-2"], "--nproc must be at least 1 (the number of training processes), got -2"),
    (["--nproc", "2", "--batch-size", "15"], "--batch-size 15 does not split evenly among 2 workers"),
])
def test_bad_nproc_is_one_line_before_any_work(tmp_path, extra, message):
    from onnx_cp.commands.finetune_cmd import finetune_command

    args = [str(tmp_path / "missing.onnx"), "--data", str(tmp_path / "missing.npz"), "-o", str(tmp_path / "o.onnx")]
    result = CliRunner().invoke(finetune_command, args + extra)
    assert result.exit_code == 2
    line, = result.output.strip().splitlines()
    assert line == f"onnx-cp: error: {message}" or line.startswith(f"onnx-cp: error: {message}")
    assert list(tmp_path.iterdir()) == []


def test_nproc_under_torchrun_is_refused(tmp_path, monkeypatch):
    from onnx_cp.commands.finetune_cmd import finetune_command

    for key, value in {"RANK": "0", "WORLD_SIZE": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": "1"}.items():
        monkeypatch.setenv(key, value)
    result = CliRunner().invoke(finetune_command, [str(tmp_path / "m.onnx"), "--data", str(tmp_path / "d.npz"),
                                                   "-o", str(tmp_path / "o.onnx"), "--nproc", "2"])
    assert result.exit_code == 2 and "under torchrun (WORLD_SIZE=2)" in result.output


def run_two_workers(files, out):
    from onnx_cp.commands.finetune_cmd import finetune_command

    out.mkdir()
    result = CliRunner().invoke(finetune_command, finetune_args(files, out, "--nproc", "2"))
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def two_workers(torch, files, tmp_path_factory):
    """The output folder of one ``--nproc 2`` run."""
    return run_two_workers(files, tmp_path_factory.mktemp("run") / "a")


def test_two_workers_write_one_model_and_a_report_saying_so(two_workers):
    assert sorted(p.name for p in two_workers.iterdir()) == ["report.json", "tuned.onnx"]  # rank 0 alone wrote
    facts = json.loads((two_workers / "report.json").read_text())
    assert facts["world_size"] == 2 and facts["report"]["world_size"] == 2
    # 64 samples a epoch, 2 epochs, in 64 / 16 = 4 steps of 8 samples on each worker
    assert facts["report"]["samples"] == 2 * 64 and facts["report"]["steps"] == 2 * 4
    assert facts["report"]["samples_per_second"] > 0
    assert set(facts["accuracy"]) == {"before rewrite (teacher)", "after rewrite (input)", "after fine-tuning"}
    tuned = onnx.load(two_workers / "tuned.onnx")
    onnx.checker.check_model(tuned, full_check=True)
    assert json.loads(next(p.value for p in tuned.metadata_props if p.key == "onnx_cp_finetune"))["world_size"] == 2


def test_the_same_seed_and_world_size_give_the_same_weights(files, two_workers, tmp_path):
    again = run_two_workers(files, tmp_path / "b")
    for a, b in zip(weights(two_workers / "tuned.onnx"), weights(again / "tuned.onnx")):
        np.testing.assert_array_equal(a, b)


def test_a_worker_that_fails_stops_the_command_with_one_error_and_no_output(torch, files, tmp_path):
    from onnx_cp.commands.finetune_cmd import finetune_command

    result = CliRunner().invoke(finetune_command, finetune_args(files, tmp_path, "--nproc", "2",
                                                                data="poisoned.npz"))
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert line.startswith("onnx-cp: error: fine-tuning worker ") and "holds NaN or infinite inputs" in line
    assert list(tmp_path.iterdir()) == []


def fail_on_rank_one(how: str):
    """A worker body for ``launch``: rank 1 is killed or hits a bug once both workers have met
    (an OnnxCpError in a worker: test_a_worker_that_fails_stops_the_command...)."""
    import torch.distributed as dist

    from onnx_cp.finetune.distributed import process_group

    with process_group("cpu") as (world, _):
        dist.barrier()
        if world.rank == 1 and how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        if world.rank == 1 and how == "bug":
            raise KeyError("oops")
        dist.barrier()
        return world.rank


@pytest.mark.parametrize("how, message", [
    ("kill", "^fine-tuning worker 1 of 2 was killed by SIGKILL .*the other workers were stopped$"),
    ("bug", r"^fine-tuning worker 1 of 2 failed \(KeyError: 'oops'\); the other workers were stopped; this is a bug"),
])
def test_launch_names_the_worker_that_failed(torch, how, message):
    with pytest.raises(OnnxCpError, match=message):
        launch(fail_on_rank_one, (how,), 2)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_machines_under_torchrun_join_one_group(torch, files, tmp_path):
    """The README's two-machine command, both "machines" on localhost: node 0 writes; node 1's -o
    folder does not even exist, as it need not on another machine."""
    port, outs, runs = free_port(), [tmp_path / "node0", tmp_path / "node1"], []
    outs[0].mkdir()
    for node, out in enumerate(outs):
        command = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node-rank", str(node),
                   "--nproc-per-node", "1", "--master-addr", "127.0.0.1", "--master-port", str(port),
                   "-m", "onnx_cp.cli", "finetune", *finetune_args(files, out)]
        runs.append(subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
    logs = [r.communicate(timeout=300)[0] for r in runs]
    assert [r.returncode for r in runs] == [0, 0], logs
    assert sorted(p.name for p in outs[0].iterdir()) == ["report.json", "tuned.onnx"]
    assert not outs[1].exists()
    facts = json.loads((outs[0] / "report.json").read_text())
    assert facts["world_size"] == 2 and facts["report"]["samples"] == 2 * 64
