"""The tune step (include/mlops_core/tuning.py): real Optuna studies in a SQLite file and a real MLflow
tracking store. The budget counts finished trials of the whole study (a retry adds none, two
workers in threads or in processes finish exactly the budget), a trial left RUNNING by a killed
task is failed and its child run KILLED, a clearly bad region is pruned, failures are recorded
per trial, and the best params come back typed."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import modeling, tracking, tuning
from include.mlops_core.config import DatasetConfig
from include.mlops_core.errors import ConfigError, DataError
from tests.unit.helpers import churn_config, churn_raw, demo_frame, regression_config

REPO = Path(__file__).resolve().parents[2]
CLASSIFIER_SPACE = {
    "C": {"type": "float", "low": 1e-3, "high": 10.0, "log": True},
    "max_iter": {"type": "int", "low": 100, "high": 300, "step": 100},
    "class_weight": {"type": "categorical", "choices": [None, "balanced"]},
}


@pytest.fixture(scope="module")
def mlflow_client(tmp_path_factory: pytest.TempPathFactory) -> Any:
    """One SQLite tracking store for the module (creating one costs seconds)."""
    from mlflow import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(folder)
        yield MlflowClient(tracking_uri=f"sqlite:///{folder / 'mlflow.db'}")


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    return request.node.name.removeprefix("test_")[:60]


def _classifier(space: dict[str, Any] | None = None, *, family: str = "logistic_regression",
                n_trials: int = 6, cv_folds: int = 2) -> DatasetConfig:
    raw = churn_raw()
    raw["training"] = {"family": family, "search_space": space or CLASSIFIER_SPACE, "seed": 42,
                       "tuning": {"n_trials": n_trials, "cv_folds": cv_folds}}
    return DatasetConfig.model_validate(raw)


def _train_rows(config: DatasetConfig, rows: int = 300) -> Any:
    return modeling.split(demo_frame(config, rows=rows), config)[0]


def _parent(client: Any, name: str) -> str:
    return client.create_run(tracking.ensure_experiment(client, name), run_name="tune").info.run_id


def _children(client: Any, parent: str) -> list[Any]:
    experiment = client.get_run(parent).info.experiment_id
    return client.search_runs([experiment], f"tags.`mlflow.parentRunId` = '{parent}'",
                              max_results=1000)


def _trials(url: str, study: str) -> list[Any]:
    import optuna

    return optuna.load_study(study_name=study, storage=tuning.storage(url)).get_trials()


def _real(trials: list[Any]) -> list[Any]:
    """The trials that ran (not failed as surplus before evaluating anything)."""
    return [t for t in trials if not t.user_attrs.get(tuning.SURPLUS_ATTR)]


def test_budget_then_a_retry_runs_nothing(mlflow_client: Any, tmp_path: Path, name: str) -> None:
    config = _classifier()
    frame = _train_rows(config)
    url, study = f"sqlite:///{tmp_path / 'optuna.db'}", tuning.study_name("churn", "run_1", "lr")
    parent = _parent(mlflow_client, name)

    first = tuning.tune(frame, config, candidate="logistic_regression", storage_url=url,
                        study=study, mlflow_client=mlflow_client, parent_run_id=parent)

    assert first["trials_run"] == first["finished"] == 6
    assert first["complete"] + first["pruned"] == 6 and first["failed"] == 0
    assert (first["metric"], first["direction"], first["skipped"]) == ("roc_auc", "maximize", None)
    assert json.loads(json.dumps(first)) == first  # a small XCom
    children = _children(mlflow_client, parent)
    assert sorted(int(r.data.tags[tuning.TRIAL_TAG]) for r in children) == list(range(6))
    for run in children:
        tags, data = run.data.tags, run.data
        assert tags[tuning.STUDY_TAG] == study and tags[tuning.CANDIDATE_TAG] == "logistic_regression"
        assert tags["mlflow.runName"] == f"logistic_regression-trial-{tags[tuning.TRIAL_TAG]}"
        assert set(data.params) == {"C", "max_iter", "class_weight"}
        state = tags[tuning.STATE_TAG]
        assert run.info.status == {"complete": "FINISHED", "pruned": "KILLED"}[state]
        history = mlflow_client.get_metric_history(run.info.run_id, "cv_roc_auc_fold")
        assert [m.step for m in history] == ([0, 1] if state == "complete" else [0])
        assert data.metrics["cv_roc_auc"] == pytest.approx(sum(m.value for m in history) / len(history))
    best = tuning.best_params(url, study)
    assert best == first["best_params"]
    assert (type(best["C"]), type(best["max_iter"])) == (float, int)
    assert best["max_iter"] in (100, 200, 300) and best["class_weight"] in (None, "balanced")

    again = tuning.tune(frame, config, candidate="logistic_regression", storage_url=url,
                        study=study, mlflow_client=mlflow_client, parent_run_id=parent)

    assert again["trials_run"] == 0 and again["finished"] == 6
    assert "budget already spent: 6 of 6" in again["skipped"]
    assert (again["best_value"], again["best_params"]) == (first["best_value"], best)
    assert len(_children(mlflow_client, parent)) == 6
    card = tuning.summary(url, study)
    assert card["trials"]["complete"] + card["trials"]["pruned"] == 6
    assert (card["best_value"], card["metric"], card["n_trials"]) == (first["best_value"],
                                                                      "roc_auc", 6)


def test_two_workers_in_threads_finish_exactly_the_budget(mlflow_client: Any, tmp_path: Path,
                                                          name: str) -> None:
    config = _classifier()
    frame = _train_rows(config)
    url, study = f"sqlite:///{tmp_path / 'optuna.db'}", "churn/lr/threads"
    parent = _parent(mlflow_client, name)

    def work(worker: int) -> dict[str, Any]:
        return tuning.tune(frame, config, candidate="logistic_regression", storage_url=url,
                           study=study, worker=worker, mlflow_client=mlflow_client,
                           parent_run_id=parent)

    with ThreadPoolExecutor(2) as pool:
        results = list(pool.map(work, [0, 1]))

    trials = _trials(url, study)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 6
    assert sum(r["trials_run"] for r in results) == len(_real(trials)) == 6
    assert len(_children(mlflow_client, parent)) == 6
    assert work(1)["trials_run"] == 0  # a later try of either worker adds nothing
    assert len(_children(mlflow_client, parent)) == 6


_WORKER = """
import json, sys, time
from pathlib import Path
import pandas as pd
from mlflow import MlflowClient
from include.mlops_core import tuning
from include.mlops_core.config import DatasetConfig
args = json.loads(sys.argv[1])
config = DatasetConfig.model_validate_json(Path(args["config"]).read_text())
frame = pd.read_pickle(args["frame"])
client = MlflowClient(tracking_uri=args["mlflow"])
Path(args["ready"]).touch()
while not Path(args["go"]).exists():
    time.sleep(0.05)
print(json.dumps(tuning.tune(frame, config, candidate=args["candidate"], storage_url=args["url"],
                             study=args["study"], worker=args["worker"], mlflow_client=client,
                             parent_run_id=args["parent"])))
"""


def test_two_processes_share_one_sqlite_study(mlflow_client: Any, tmp_path: Path,
                                              name: str) -> None:
    config = _classifier(n_trials=8)
    (tmp_path / "config.json").write_text(config.model_dump_json())
    _train_rows(config).to_pickle(tmp_path / "frame.pkl")
    url, study = f"sqlite:///{tmp_path / 'optuna.db'}", "churn/lr/processes"
    parent = _parent(mlflow_client, name)
    common = {"config": str(tmp_path / "config.json"), "frame": str(tmp_path / "frame.pkl"),
              "mlflow": mlflow_client.tracking_uri, "candidate": "logistic_regression",
              "url": url, "study": study, "parent": parent, "go": str(tmp_path / "go")}
    procs = [subprocess.Popen(
        [sys.executable, "-c", _WORKER, json.dumps(
            {**common, "worker": worker, "ready": str(tmp_path / f"ready{worker}")})],
        cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for worker in (0, 1)]
    deadline = time.monotonic() + 60
    while not all((tmp_path / f"ready{w}").exists() for w in (0, 1)):  # both started: overlap
        assert time.monotonic() < deadline and all(p.poll() is None for p in procs), \
            [p.communicate() for p in procs]
        time.sleep(0.05)
    (tmp_path / "go").touch()
    outputs = [p.communicate(timeout=120) for p in procs]

    assert [p.returncode for p in procs] == [0, 0], outputs
    assert "database is locked" not in "".join(err for _, err in outputs)
    results = [json.loads(out.strip().splitlines()[-1]) for out, _ in outputs]
    trials = _trials(url, study)
    assert sum(t.state.name in ("COMPLETE", "PRUNED") for t in trials) == 8
    assert sum(r["trials_run"] for r in results) == len(_real(trials)) == 8
    assert {t.user_attrs[tuning.WORKER_ATTR] for t in trials} == {0, 1}  # both did work
    assert len(_children(mlflow_client, parent)) == 8


def test_a_trial_left_running_by_a_killed_task_is_failed(mlflow_client: Any, tmp_path: Path,
                                                         name: str) -> None:
    import optuna

    config = _classifier(n_trials=3)
    url, study = f"sqlite:///{tmp_path / 'optuna.db'}", "churn/lr/killed"
    parent = _parent(mlflow_client, name)
    rdb = tuning.storage(url, grace_period=1)
    killed = optuna.create_study(study_name=study, storage=rdb, direction="maximize")
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = killed.ask()  # what a killed worker leaves: RUNNING, heartbeat stopped
    trial.suggest_float("C", 1e-3, 10.0, log=True)
    study_id = rdb.get_study_id_from_name(study)
    rdb.record_heartbeat(rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number))
    orphan = mlflow_client.create_run(
        mlflow_client.get_run(parent).info.experiment_id, run_name="logistic_regression-trial-0",
        tags={"mlflow.parentRunId": parent, tuning.STUDY_TAG: study, tuning.TRIAL_TAG: "0"})
    time.sleep(2.2)  # past the grace period (SQLite's clock has whole seconds)

    result = tuning.tune(_train_rows(config), config, candidate="logistic_regression",
                         storage_url=url, study=study, worker=1, mlflow_client=mlflow_client,
                         parent_run_id=parent, grace_period=1)

    assert result["stale_failed"] == 1 and result["failed"] == 1
    assert result["finished"] == result["trials_run"] == 3  # the dead trial does not count
    assert _trials(url, study)[0].state.name == "FAIL"
    run = mlflow_client.get_run(orphan.info.run_id)
    assert run.info.status == "KILLED" and run.data.tags[tuning.STATE_TAG] == "failed"
    assert "killed" in run.data.tags[tuning.REASON_TAG]
    assert len(_children(mlflow_client, parent)) == 4  # reused, not duplicated


def test_a_retry_fails_its_own_leftover_at_once(tmp_path: Path) -> None:
    import optuna

    config = _classifier(n_trials=2)
    url, study = f"sqlite:///{tmp_path / 'optuna.db'}", "churn/lr/own"
    killed = optuna.create_study(study_name=study, storage=tuning.storage(url),
                                 direction="maximize")
    with pytest.warns(UserWarning, match="Heartbeat"):
        trial = killed.ask()
    trial.set_user_attr(tuning.WORKER_ATTR, 0)

    result = tuning.tune(_train_rows(config), config, candidate="logistic_regression",
                         storage_url=url, study=study, worker=0)  # default 120 s grace

    assert (result["stale_failed"], result["finished"], result["trials_run"]) == (1, 2, 2)
    assert _trials(url, study)[0].user_attrs[tuning.REASON_ATTR] == \
        "left running by an earlier try of worker 0"


def test_regression_minimises_rmse_and_prunes_a_bad_region(tmp_path: Path) -> None:
    # alpha above ~1e3 shrinks ridge to the mean: half the log range is clearly bad.
    config = regression_config(training={
        "search_space": {"alpha": {"type": "float", "low": 1e-2, "high": 1e8, "log": True}},
        "tuning": {"n_trials": 8, "cv_folds": 3}})
    url = f"sqlite:///{tmp_path / 'optuna.db'}"

    result = tuning.tune(_train_rows(config), config, candidate="ridge", storage_url=url,
                         study="charges/ridge/r1")

    assert (result["metric"], result["direction"]) == ("rmse", "minimize")
    assert result["pruned"] >= 1 and result["finished"] == 8
    trials = _trials(url, "charges/ridge/r1")
    complete = [t.value for t in trials if t.state.name == "COMPLETE"]
    assert result["best_value"] == min(complete)
    assert result["best_params"]["alpha"] < 1e3
    assert all(t.params["alpha"] > result["best_params"]["alpha"] for t in trials
               if t.state.name == "PRUNED")


def test_a_failing_trial_is_recorded_not_fatal(mlflow_client: Any, tmp_path: Path,
                                               name: str) -> None:
    space = {"solver": {"type": "categorical", "choices": ["lbfgs", "no_such_solver"]},
             "C": {"type": "float", "low": 0.1, "high": 10.0, "log": True}}
    config = _classifier(space, n_trials=3)
    url, parent = f"sqlite:///{tmp_path / 'optuna.db'}", _parent(mlflow_client, name)

    result = tuning.tune(_train_rows(config), config, candidate="logistic_regression",
                         storage_url=url, study="s", mlflow_client=mlflow_client,
                         parent_run_id=parent)

    # Optuna's samplers ignore failed trials (they keep proposing the bad solver), so a worker
    # stops once failures outnumber its budget three to one, with what completed.
    assert result["complete"] >= 1 and 1 <= result["failed"] <= 3 * 3
    assert result["finished"] == 3 or result["failed"] == 3 * 3
    assert result["best_params"]["solver"] == "lbfgs"
    failed = [r for r in _children(mlflow_client, parent)
              if r.data.tags[tuning.STATE_TAG] == "failed"]
    assert len(failed) == result["failed"]
    assert all(r.info.status == "FAILED" and r.data.params["solver"] == "no_such_solver"
               and "no_such_solver" in r.data.tags[tuning.REASON_TAG] for r in failed)


def test_every_trial_failing_is_a_config_error(tmp_path: Path) -> None:
    config = _classifier({"solver": {"type": "categorical", "choices": ["no_such_solver"]}},
                         n_trials=3)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(ConfigError, match="every trial of candidate 'logistic_regression' "
                                          "failed \\(3\\).*no_such_solver.*search_space"):
        tuning.tune(_train_rows(config), config, candidate="logistic_regression",
                    storage_url=url, study="s")
    with pytest.raises(ConfigError, match="no complete trial.*'failed': 3"):
        tuning.best_params(url, "s")


def test_bad_data_fails_the_task(tmp_path: Path) -> None:
    config = _classifier({"max_depth": {"type": "int", "low": 2, "high": 3}}, family="xgboost")
    frame = _train_rows(config)
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(DataError, match="3 training rows cannot be cut into 2"):
        tuning.tune(frame.head(3), config, candidate="xgboost", storage_url=url, study="s")

    frame["churned"] += 1  # labels 1/2: xgboost's DataError is raised inside the trial
    with pytest.raises(DataError, match="class labels 0..n-1"):
        tuning.tune(frame, config, candidate="xgboost", storage_url=url, study="s")
    assert [t.state.name for t in _trials(url, "s")] == ["FAIL"]


def test_missing_study_and_unknown_candidate(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'optuna.db'}"
    with pytest.raises(ConfigError, match="no tuning study 'nope'.*run it first"):
        tuning.summary(url, "nope")
    config = _classifier()
    with pytest.raises(ConfigError, match="no candidate 'ridge'"):
        tuning.tune(_train_rows(config), config, candidate="ridge", storage_url=url, study="s")
    plain = regression_config()
    with pytest.raises(ConfigError, match="no search_space"):
        tuning.tune(_train_rows(plain), plain, candidate="ridge", storage_url=url, study="s")


def test_study_names_and_urls() -> None:
    assert tuning.study_name("churn", "scheduled__2025-01-01", "lr") == \
        tuning.study_name("churn", "scheduled__2025-01-01", "lr") == "churn/lr/scheduled__2025-01-01"
    assert tuning.study_name("churn", "manual__2", "lr") != tuning.study_name("churn", "manual__1",
                                                                               "lr")
    long = tuning.study_name("m" * 300, "r", "lr")
    assert len(long) <= 250 and long != tuning.study_name("m" * 299 + "x", "r", "lr")
    assert tuning.redact("postgresql+psycopg://optuna:s3cr:et@db:5432/optuna") == \
        "postgresql+psycopg://optuna:***@db:5432/optuna"


def test_storage_errors_never_show_the_password() -> None:
    from include.mlops_core.errors import ServiceUnavailableError

    with pytest.raises(ServiceUnavailableError) as err:  # nothing listens on port 1
        tuning.storage("postgresql://optuna:hunter2@127.0.0.1:1/optuna")
    assert "hunter2" not in str(err.value) and "optuna:***@127.0.0.1:1" in str(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__
    with pytest.raises(ConfigError) as err:
        tuning.storage("not a url hunter2")
    assert "hunter2" not in str(err.value)


def test_trials_cross_validate_on_a_seeded_stratified_sample_of_at_most_max_rows() -> None:
    from include.mlops_core.tuning import sample

    config = churn_config()
    frame = demo_frame(config, rows=3000)
    kept = sample(frame, config, 1000)
    assert len(kept) == 1000
    assert kept.equals(sample(frame, config, 1000))  # every worker and retry: the same rows
    share = frame["churned"].mean()
    assert abs(kept["churned"].mean() - share) < 0.005  # stratified
    assert sample(frame, config, None) is frame and sample(frame, config, 5000) is frame


@pytest.mark.parametrize("error", [
    pytest.param("ProgrammingError", id="postgres-duplicate-table"),
    pytest.param("IntegrityError", id="duplicate-version-row"),
    pytest.param("OperationalError", id="sqlite-table-exists"),
])
def test_workers_racing_to_create_a_new_database_s_tables_both_get_the_storage(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, error: str) -> None:
    """Two tune tasks starting together on a new database both run Optuna's CREATE TABLE; the
    loser's error (PostgreSQL's DuplicateTable is a ProgrammingError) is retried, and the next
    attempt finds the tables made. Found by the Celery test with the study in PostgreSQL."""
    import optuna
    import sqlalchemy.exc

    real = optuna.storages.RDBStorage
    calls: list[int] = []

    def first_loses_the_race(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise getattr(sqlalchemy.exc, error)(
                'CREATE TABLE studies', {}, Exception('relation "studies" already exists'))
        return real(*args, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", first_loses_the_race)
    storage = tuning.storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []


def test_a_database_error_that_is_no_race_is_not_retried(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    import optuna
    import sqlalchemy.exc

    calls: list[int] = []

    def broken(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        raise sqlalchemy.exc.ProgrammingError("SELECT", {}, Exception("permission denied"))

    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(sqlalchemy.exc.ProgrammingError, match="permission denied"):
        tuning.storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(calls) == 1
