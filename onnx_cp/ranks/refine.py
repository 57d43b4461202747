"""--search N: refine an allocation by Bayesian optimization (optuna's TPE, seeded) on the proxy.

Each trial picks one option per layer; an allocation over the budget is repaired by moving
layers to cheaper options, least predicted damage per unit of cost saved first. The value
is the measured relative error of the model's outputs on the calibration inputs. The starting
allocations (knapsack, uniform error, uniform rank) are the first trials, so the search can only
improve on the best of them.

With ``storage`` (an RDB URL: ``sqlite:///study.db``, ``postgresql://user:pw@host/db``) the trials
live in an optuna study there: several processes or machines searching the same study share
their trials, and a later run resumes it. A study is named after the layers and candidate ranks
it searches (``study_name`` to choose another name); each trial records the allocation it
evaluated, so trials made under another budget (a re-allocation round, another run's measured
costs) serve as known values, and only allocations within the current budget can win.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
import warnings
from pathlib import Path
from typing import Callable, Sequence

from onnx_cp.errors import OnnxCpError, param

_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_SPACE_ATTR = "onnx_cp_space"  # the study's user attribute: [[layer name, candidate ranks], ...]
_PICKS_ATTR = "picks"  # each trial's user attribute: the (repaired) allocation it evaluated
_DRIVERS = {"postgresql": "psycopg2-binary", "mysql": "PyMySQL (and write mysql+pymysql://)",
            "mssql": "pyodbc", "oracle": "oracledb"}


def repair(picks: list[int], options: Sequence[tuple[list[float], list[float]]], budget: float) -> list[int]:
    picks = list(picks)
    while _spend(picks, options) > budget:
        best = None
        for layer, ((cost, damage), k) in enumerate(zip(options, picks)):
            for j in range(len(cost)):
                saved = cost[k] - cost[j]
                if saved > 0:
                    ratio = (damage[j] - damage[k]) / saved
                    if best is None or ratio < best[0]:
                        best = (ratio, layer, j)
        if best is None:
            break
        picks[best[1]] = best[2]
    return picks


def refine(options, budget: float, starts: dict[tuple[int, ...], float], evaluate: Callable[[list[int]], float],
           trials: int, seed: int, progress=None, *, storage: str | None = None, study_name: str | None = None,
           space: Sequence[tuple[str, Sequence[int]]] | None = None) -> tuple[list[int], float]:
    """The best allocation (and its value) among ``starts`` (allocation -> known value) and
    ``trials`` sampled ones. The starts are the first trials and are not evaluated again.

    ``storage``: keep the trials in that database's study (``study_name``, else one named after
    ``space``: each layer's name and candidate ranks, which identify the search); the best is
    then the best of every trial in the study that fits ``budget``, whichever process ran it.
    """
    optuna = _optuna()
    names = [f"layer{i}" for i in range(len(options))]
    if storage is None:
        study = optuna.create_study(direction="minimize", sampler=optuna.samplers.TPESampler(seed=seed))
    else:
        space = [[str(n), [_rank_label(r) for r in ranks]] for n, ranks in space] if space is not None else \
            [[name, list(range(len(o[0]) - 1))] for name, o in zip(names, options)]
        study = _shared_study(optuna, storage, study_name, space, seed)
    known = _known(study, options)
    seen = {**known, **starts}
    queued = {tuple(t.system_attrs.get("fixed_params", t.params).get(n) for n in names)
              for t in study.get_trials(deepcopy=False)}  # any state: another process may be running them
    fresh = [start for start in starts if tuple(start) not in queued]
    if storage is None:
        for start in fresh:
            study.enqueue_trial(dict(zip(names, start)))
        total = trials + len(fresh)
    else:
        # Shared: the starts go in as finished trials. Queued ones would wait in the database,
        # and two processes could both take the same one (sqlite has no row lock), and the
        # second to finish it fails ("Cannot tell a COMPLETE trial").
        spaces = {n: optuna.distributions.IntDistribution(0, len(o[0]) - 1) for n, o in zip(names, options)}
        for start in fresh:
            study.add_trial(optuna.trial.create_trial(
                params=dict(zip(names, (int(k) for k in start))), distributions=spaces, value=starts[start],
                user_attrs={_PICKS_ATTR: [int(k) for k in start]}))
        total = trials
    done = 0

    def objective(trial) -> float:
        nonlocal done
        if progress:
            progress(f"search: trial {done + 1}", done, total)
        done += 1
        picks = repair([trial.suggest_int(n, 0, len(o[0]) - 1) for n, o in zip(names, options)], options, budget)
        key = tuple(picks)
        if key not in seen and storage is not None:
            seen.update(_known(study, options))  # another process may have evaluated it meanwhile
        if key not in seen:
            seen[key] = evaluate(picks)
        trial.set_user_attr(_PICKS_ATTR, [int(k) for k in picks])
        return seen[key]

    study.optimize(objective, n_trials=total)
    finished = [(value, n, list(key)) for n, (key, value) in enumerate(_known(study, options, True).items())]
    fitting = [t for t in finished if _spend(t[2], options) <= budget]
    value, _, picks = min(fitting or finished)  # none fits only when no allocation can (repair gave up)
    return picks, value


def open_storage(url: str):
    """optuna's RDBStorage at ``url``, created if new; OnnxCpError naming the problem otherwise.

    Call it before long work to refuse a malformed or unreachable URL at once.
    """
    optuna = _optuna()
    check_storage_url(url)
    dialect = url.split("://", 1)[0].split("+", 1)[0].lower()
    if dialect == "sqlite":
        _check_sqlite_folder(url)
    engine = {"connect_args": {"timeout": 60}} if dialect == "sqlite" else {"pool_pre_ping": True}
    from sqlalchemy.exc import ArgumentError

    try:
        return _rdb_storage(optuna, url, engine)
    except ImportError:
        driver = _DRIVERS.get(dialect, f"the SQLAlchemy driver for {dialect}")
        raise OnnxCpError(f"{_storage(_shown(url))}: the database driver is not installed; "
                          f"pip install {driver}") from None
    except Exception as exc:  # sqlalchemy's errors: bad URL, unknown dialect, no server, refused login
        reason = " ".join(str(exc).split("(Background on this error")[0].split())[:300]
        raise OnnxCpError(f"{_storage(_shown(url))}: cannot open the study database ({reason}); check "
                          "the URL (sqlite:///study.db, postgresql://user:password@host/database), that the "
                          "server is up and reachable, and the credentials",
                          usage=isinstance(exc, ArgumentError)) from None


def _rdb_storage(optuna, url: str, engine: dict, attempts: int = 5):
    """RDBStorage(url); processes creating one new database at once race on its tables, so retry."""
    from sqlalchemy.exc import IntegrityError, OperationalError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                # A process that dies mid-trial stops beating; another process marks its trial failed.
                return optuna.storages.RDBStorage(url, engine_kwargs=engine, heartbeat_interval=30,
                                                  grace_period=120)
        except (IntegrityError, OperationalError) as exc:
            racing = isinstance(exc, IntegrityError) or any(s in str(exc) for s in ("locked", "already exists"))
            if not racing or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))


def check_storage_url(url: str) -> None:
    """Refuse text that is not a database URL, without importing anything."""
    if not isinstance(url, str) or not _URL.match(url):
        raise OnnxCpError(f"{param('selection.storage', repr(url))} is not a database URL; write it like "
                          "sqlite:///study.db (a file beside you) or postgresql://user:password@host/database",
                          usage=True)


def default_study_name(space) -> str:
    """``onnx-cp-`` and 12 hex digits of the layers and candidate ranks the search chooses among."""
    digest = hashlib.sha256(json.dumps(space, separators=(",", ":")).encode()).hexdigest()
    return f"onnx-cp-{digest[:12]}"


def _shared_study(optuna, url: str, name: str | None, space: list, seed: int):
    storage = open_storage(url)
    name = name or default_study_name(space)
    # Seeded per process: two processes on one study would otherwise propose the same trials.
    try:
        trials = len(storage.get_all_trials(storage.get_study_id_from_name(name), deepcopy=False))
    except KeyError:  # a new study
        trials = 0
    entropy = (seed, trials, os.getpid())
    sampler = optuna.samplers.TPESampler(seed=int(hashlib.sha256(repr(entropy).encode()).hexdigest()[:8], 16))
    study = optuna.create_study(storage=storage, study_name=name, direction="minimize", sampler=sampler,
                                load_if_exists=True)
    held = study.user_attrs.get(_SPACE_ATTR)
    if held is None and study.trials:
        raise OnnxCpError(f"{_study(name)}: the study in {_shown(url)} was not made by onnx-cp's rank "
                          f"search; give another {param('selection.study_name')}")
    if held is None:
        study.set_user_attr(_SPACE_ATTR, space)
    elif held != space:
        raise OnnxCpError(f"{_study(name)}: the study in {_shown(url)} searched other layers or "
                          f"candidate ranks ({_describe(held)}; this run: {_describe(space)}); give another "
                          f"{param('selection.study_name')}, "
                          "or rerun with the model and settings it was made for")
    if study.direction != optuna.study.StudyDirection.MINIMIZE:
        raise OnnxCpError(f"{_study(name)}: the study in {_shown(url)} maximizes; give another "
                          f"{param('selection.study_name')}")
    return study


def _known(study, options, ordered: bool = False) -> dict[tuple[int, ...], float]:
    """allocation -> value of the study's finished trials that evaluated an allocation of these
    options (first trial wins; in trial order when ``ordered``)."""
    from optuna.trial import TrialState

    found: dict[tuple[int, ...], float] = {}
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    for trial in sorted(trials, key=lambda t: t.number) if ordered else trials:
        picks = trial.user_attrs.get(_PICKS_ATTR)
        if (isinstance(picks, list) and len(picks) == len(options)
                and all(isinstance(k, int) and 0 <= k < len(o[0]) for k, o in zip(picks, options))):
            found.setdefault(tuple(picks), float(trial.value))
    return found


def _spend(picks, options) -> float:
    return sum(o[0][k] for o, k in zip(options, picks))


def _check_sqlite_folder(url: str) -> None:
    from sqlalchemy.engine import make_url

    try:
        database = make_url(url).database
    except Exception:  # noqa: BLE001 - open_storage reports the malformed URL
        return
    if database and database != ":memory:":
        folder = Path(database).expanduser().parent
        if not folder.is_dir():
            raise OnnxCpError(f"{_storage(url)}: the folder {folder} does not exist; create it first "
                              "(sqlite:///study.db is a path relative to here, sqlite:////abs/study.db an "
                              "absolute one)", usage=True)


def _storage(url: str) -> str:
    """The study database in a message: ``selection.storage='sqlite:///s.db'`` / ``--search-storage sqlite:///s.db``."""
    return param("selection.storage", repr(url), cli=url)


def _study(name: str) -> str:
    return param("selection.study_name", repr(name), cli=name)


def _shown(url: str) -> str:
    """The URL with any password hidden."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def _rank_label(rank):
    """A candidate in the study's space: a CP rank as an int, another decomposition's as its label."""
    return rank if isinstance(rank, str) else int(rank)


def _describe(space) -> str:
    layers = [f"{n} {r}" for n, r in space[:3]]
    return f"{len(space)} layers: " + ", ".join(layers) + (", ..." if len(space) > 3 else "")


def _optuna():
    try:
        import optuna
    except ImportError:
        raise OnnxCpError(f"{param('selection.search')} needs optuna: pip install optuna") from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return optuna
