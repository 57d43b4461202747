"""Fitting in worker processes gives the same factors as fitting in one."""
import subprocess
import sys

import numpy as np

from onnx_cp.decompositions.cp_solver import FitOptions
from onnx_cp.parallel_fit import FitTask, fit_all


def _tasks():
    rng = np.random.default_rng(3)
    return [FitTask(k, f"layer{k}", [rng.standard_normal((8, 6, 3, 3)) for _ in range(groups)], rank, seed=k)
            for k, (groups, rank) in enumerate([(1, 4), (2, 3), (1, 6)])]


def test_any_number_of_workers_gives_identical_factors():
    options = FitOptions(max_iter=40, progress_tol=1e-3)
    one, two = fit_all(_tasks(), options, jobs=1), fit_all(_tasks(), options, jobs=2)
    assert one.keys() == two.keys() == {0, 1, 2}
    for key in one:
        assert len(one[key].fits) == len(two[key].fits)
        for a, b in zip(one[key].fits, two[key].fits):
            for fa, fb in zip(a.factors, b.factors):
                np.testing.assert_array_equal(fa, fb)


def test_workers_start_from_a_script_without_a_main_guard(tmp_path):
    # An API user's script is not re-run in the workers (it has no `if __name__ == "__main__"`).
    script = tmp_path / "user.py"
    script.write_text(
        "import numpy as np\n"
        "from onnx_cp.decompositions.cp_solver import FitOptions\n"
        "from onnx_cp.parallel_fit import FitTask, fit_all\n"
        "rng = np.random.default_rng(0)\n"
        "tasks = [FitTask(k, str(k), [rng.standard_normal((6, 4, 3, 3))], 3, k) for k in range(2)]\n"
        "print(sorted(fit_all(tasks, FitOptions(max_iter=5), jobs=2)))\n")
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[0, 1]"


def test_no_fit_starts_past_the_deadline():
    import time

    options = FitOptions(max_iter=40, progress_tol=1e-3)
    for jobs in (1, 2):
        assert fit_all(_tasks(), options, jobs=jobs, deadline=time.perf_counter() - 1) == {}
        assert fit_all(_tasks(), options, jobs=jobs, deadline=time.perf_counter() + 600).keys() == {0, 1, 2}
