"""--search-storage: the rank search keeps its trials in an optuna RDB study (sqlite here), so runs
resume it and concurrent processes share it; bad URLs fail in one line before any work.

The search problem of most tests is synthetic (no model): 4 layers with 4 options each, costs 1..4
(option 3, the Conv kept, costs 4 and does no damage), a budget of 8, and an allocation's value
the sum of its damages. The CLI tests rewrite the three-Conv chain of test_rank_selection.
"""
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner

from onnx_cp import OnnxCpError
from onnx_cp.ranks.options import RankSelection
from onnx_cp.ranks.refine import default_study_name, open_storage, refine, repair

optuna = pytest.importorskip("optuna")

DAMAGE = [[0.9, 0.5, 0.2, 0.0], [0.8, 0.3, 0.1, 0.0], [0.7, 0.6, 0.4, 0.0], [0.5, 0.2, 0.05, 0.0]]
OPTIONS = [([1.0, 2.0, 3.0, 4.0], d) for d in DAMAGE]
BUDGET = 8.0
SPACE = [(f"conv{i}", [2, 4, 8]) for i in range(4)]
STARTS = {(1, 1, 1, 1): sum(d[1] for d in DAMAGE), (0, 2, 0, 2): 0.9 + 0.1 + 0.7 + 0.05}


def value(picks):
    return sum(d[k] for d, k in zip(DAMAGE, picks))


def trials_in(url, name=None):
    name = name or default_study_name([[n, r] for n, r in SPACE])
    return optuna.load_study(study_name=name, storage=url).get_trials(deepcopy=False)


def search(url, trials, **kwargs):
    return refine(OPTIONS, BUDGET, dict(STARTS), value, trials, 0, storage=url, space=SPACE, **kwargs)


def test_trials_persist_and_a_second_run_resumes_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    picks, best = search(url, 4)
    first = trials_in(url)
    assert len(first) == 4 + len(STARTS)  # the starts once, then the sampled trials
    assert best == min(t.value for t in first) and best == value(picks) and best <= min(STARTS.values())
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in first)

    evaluated = []
    picks2, best2 = refine(OPTIONS, BUDGET, dict(STARTS), lambda p: evaluated.append(p) or value(p), 3, 0,
                           storage=url, space=SPACE)
    assert len(trials_in(url)) == len(first) + 3  # resumed: the starts are not added again
    assert best2 <= best and sum(OPTIONS[i][0][k] for i, k in enumerate(picks2)) <= BUDGET
    assert not [p for p in evaluated if tuple(p) in {tuple(t.user_attrs["picks"]) for t in first}]


def test_a_smaller_budget_only_takes_trials_that_fit_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search(url, 4)
    picks, best = refine(OPTIONS, 6.0, {(1, 1, 1, 1): value((1, 1, 1, 1))}, value, 2, 0, storage=url, space=SPACE)
    assert sum(OPTIONS[i][0][k] for i, k in enumerate(picks)) <= 6.0 and best == value(picks)


def test_the_in_memory_search_is_unchanged_by_the_storage_code():
    picks, best = refine(OPTIONS, BUDGET, dict(STARTS), value, 6, 0)
    again = refine(OPTIONS, BUDGET, dict(STARTS), value, 6, 0)
    assert (picks, best) == again and best == value(picks) and best <= min(STARTS.values())
    assert picks == repair(picks, OPTIONS, BUDGET)


def test_two_concurrent_processes_on_one_study_run_the_trials_of_both(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    code = textwrap.dedent(f"""
        import json, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        from test_search_storage import search
        print(json.dumps(search({url!r}, 5)[1]))
    """)
    runs = [subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True) for _ in range(2)]
    outs = [r.communicate(timeout=120) for r in runs]
    assert all(r.returncode == 0 for r in runs), [o[1][-2000:] for o in outs]
    trials = trials_in(url)
    # each process runs its 5 trials, and the starts are added once (twice only on an exact tie)
    assert 2 * 5 + len(STARTS) <= len(trials) <= 2 * (5 + len(STARTS))
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    # the process that finished last saw every trial, its own and the other's
    assert min(json.loads(o[0]) for o in outs) == min(t.value for t in trials)


def test_a_study_of_other_layers_is_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'study.db'}"
    search(url, 1, study_name="shared")
    with pytest.raises(OnnxCpError, match="study in .* searched other layers or candidate ranks"):
        refine(OPTIONS, BUDGET, dict(STARTS), value, 1, 0, storage=url, study_name="shared",
               space=[(f"other{i}", [2, 4, 8]) for i in range(4)])


@pytest.mark.parametrize("url, message", [
    ("study.db", "is not a database URL; write it like sqlite:///study.db"),
    ("sqlite:///{tmp}/missing/study.db", "the folder .*missing does not exist; create it first"),
    ("sqlite://study.db", "cannot open the study database \\(Invalid SQLite URL"),
    ("nosuchdb://host/db", "cannot open the study database"),
])
def test_bad_storage_urls_are_refused_in_one_line(tmp_path, url, message):
    url = url.format(tmp=tmp_path)
    with pytest.raises(OnnxCpError, match=message):
        open_storage(RankSelection(target_speedup=2.0, search=2, storage=url).storage)


def test_storage_options_need_each_other():
    with pytest.raises(OnnxCpError, match="give selection.search=N as well"):
        RankSelection(target_speedup=2.0, storage="sqlite:///s.db")
    with pytest.raises(OnnxCpError, match="selection.study_name names a study in selection.storage") as info:
        RankSelection(target_speedup=2.0, search=2, study_name="a")
    assert info.value.cli.startswith("--study-name names a study in --search-storage")


@pytest.fixture
def chain(tmp_path):
    from test_rank_selection import chain_model

    path = tmp_path / "m.onnx"
    onnx.save(chain_model(channels=(8, 32, 32, 16)), path)
    return path


def rewrite_args(model, out, *extra):
    return ["rewrite", str(model), "-o", str(out), "--budget-macs", "200000", "--max-iter", "20",
            "--realize", "cp4", "--calib-count", "2", "-q", *extra]


@pytest.mark.parametrize("url", ["study.db", "sqlite:///{tmp}/missing/study.db", "sqlite://x.db"])
def test_a_bad_url_fails_in_one_line_before_any_fit(tmp_path, chain, monkeypatch, url):
    from onnx_cp.cli import cli
    from onnx_cp.commands import rewrite_cmd

    def no_work(*args, **kwargs):
        raise AssertionError("the rewrite started")

    monkeypatch.setattr(rewrite_cmd, "rewrite_with_report", no_work)
    out = tmp_path / "o.onnx"
    result = CliRunner().invoke(cli, rewrite_args(chain, out, "--search", "2", "--search-storage",
                                                  url.format(tmp=tmp_path)))
    assert result.exit_code == 2, result.output
    line, = result.output.strip().splitlines()
    assert line.startswith("onnx-cp: error: --search-storage") and not out.exists()


def test_rewrite_leaves_its_trials_in_the_database_and_a_rerun_adds_to_them(tmp_path, chain):
    from onnx_cp.cli import cli

    url = f"sqlite:///{tmp_path / 'study.db'}"
    counts = []
    for run in range(2):
        out = tmp_path / f"o{run}.onnx"
        result = CliRunner().invoke(cli, rewrite_args(chain, out, "--search", "3", "--search-storage", url,
                                                      "--study-name", "chain"))
        assert result.exit_code == 0, result.output
        onnx.checker.check_model(onnx.load(out), full_check=True)
        counts.append(len(optuna.load_study(study_name="chain", storage=url).trials))
    assert 3 < counts[0] <= 3 + 3  # 3 sampled trials and the starts (at most 3 of them)
    assert counts[1] == counts[0] + 3
