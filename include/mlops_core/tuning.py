"""The tune step: an Optuna search over one candidate's typed search space.

One study per DAG run and candidate (:func:`study_name`) lives in an RDB storage: SQLite on the
embedded stack, PostgreSQL in production (:func:`storage`). The training DAG maps
``tuning.parallel_tasks`` tasks over :func:`tune`, each with its own ``worker`` index, all on
that one study; the train step reads :func:`best_params` and the promotion card :func:`summary`.

Each trial cross-validates the candidate on the training rows (``tuning.cv_folds`` stratified
folds for classification, plain K-fold for regression), reports the running mean of the
comparison metric after each fold and is pruned (median rule) when it falls behind. The budget
is ``tuning.n_trials`` *finished* trials (complete + pruned) in the study, whoever ran them:

- a retried or resumed task continues the same study and, once the budget is spent, runs
  nothing;
- trials another worker is running count as taken, so concurrent workers stop at exactly
  ``n_trials`` (a worker that still loses the race for the last slot fails its trial as
  ``surplus`` before evaluating anything; it never counts);
- a trial whose task was killed stays RUNNING in the storage. The heartbeat (every
  ``grace_period / 4`` s while a trial runs) lets the next task fail it once it is older than
  ``grace_period``; a retry of the same worker fails its own leftovers at once.

A trial whose parameters the estimator rejects (``ConfigError``, ``ValueError``) is recorded as
failed with its reason; a ``DataError`` fails the task. With an MLflow client and a parent run,
every trial is a child run of the parent, found again by its study and trial tags.
"""

from __future__ import annotations

import logging
import math
import re
import time
import warnings
from statistics import fmean
from typing import TYPE_CHECKING, Any

from include.mlops_core.config import HIGHER_IS_BETTER, Categorical, DatasetConfig, FloatRange, IntRange
from include.mlops_core.errors import ConfigError, DataError, ServiceUnavailableError

if TYPE_CHECKING:
    from collections.abc import Callable

    import optuna
    import pandas as pd

log = logging.getLogger(__name__)

GRACE_PERIOD_S = 120  # a RUNNING trial without a heartbeat for this long belongs to a dead task
SQLITE_BUSY_TIMEOUT_S = 60  # how long a SQLite writer waits for the other processes' locks

# Optuna trial user attributes
WORKER_ATTR = "mlops.worker"
REASON_ATTR = "mlops.fail_reason"
SURPLUS_ATTR = "mlops.surplus"
# MLflow tags of the child runs
PARENT_TAG = "mlflow.parentRunId"
STUDY_TAG = "mlops.optuna.study"
TRIAL_TAG = "mlops.optuna.trial"
CANDIDATE_TAG = "mlops.candidate"
WORKER_TAG = "mlops.optuna.worker"
STATE_TAG = "mlops.optuna.state"
REASON_TAG = "mlops.optuna.reason"
RUN_STATUS = {"complete": "FINISHED", "pruned": "KILLED", "failed": "FAILED"}


class _Surplus(Exception):  # noqa: N818 - a trial outcome, caught by optimize
    """The study's budget was taken by other workers between this worker's check and its ask."""


class _NoSurplusTraceback(logging.Filter):
    """Drop Optuna's warning-with-traceback for a surplus trial (an expected end, logged by us
    in one line); every other failed trial keeps Optuna's warning."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.exc_info and isinstance(record.exc_info[1], _Surplus))


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # no INFO line per trial
    optimize_log = logging.getLogger("optuna.study._optimize")
    if not any(isinstance(f, _NoSurplusTraceback) for f in optimize_log.filters):
        optimize_log.addFilter(_NoSurplusTraceback())


# -- names and storage ----------------------------------------------------------------------------
def study_name(model_name: str, dag_run_id: str, candidate: str) -> str:
    """The study of one candidate in one DAG run: the same for every try and every mapped worker
    of that run, so a retried task continues the study instead of starting another."""
    name = f"{model_name}/{candidate}/{dag_run_id}"
    if len(name) <= 250:
        return name
    import hashlib

    return f"{name[:233]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"


def redact(url: str) -> str:
    """``url`` with its password replaced by ``***`` (what may appear in a log or message)."""
    return re.sub(r"(://[^/@:]*:)[^/@]*@", r"\1***@", url)


def storage(url: str, *, grace_period: int = GRACE_PERIOD_S,
            on_stale: Callable[[optuna.Study, optuna.trial.FrozenTrial], None] | None = None,
            ) -> optuna.storages.RDBStorage:
    """The Optuna RDB storage at ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``;
    a bare ``postgresql://`` uses psycopg 3).

    Running trials record a heartbeat every ``grace_period / 4`` seconds; a RUNNING trial
    whose last heartbeat is older than ``grace_period`` is failed the next time any worker of
    the study starts a trial, and ``on_stale(study, trial)`` is called for each one failed by
    this process. SQLite waits up to ``SQLITE_BUSY_TIMEOUT_S`` for another process's lock
    instead of failing with "database is locked".
    """
    import optuna
    import sqlalchemy.exc

    url = re.sub(r"^postgres(ql)?://", "postgresql+psycopg://", url)
    engine_kwargs: dict[str, Any] = (
        {"connect_args": {"timeout": SQLITE_BUSY_TIMEOUT_S}} if url.startswith("sqlite")
        else {"pool_pre_ping": True})
    password = re.match(r"[^:]+://[^/@:]*:([^/@]*)@", url)
    try:
        for attempt in range(1, 6):
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(
                        url, engine_kwargs=engine_kwargs, grace_period=grace_period,
                        heartbeat_interval=max(1, grace_period // 4),
                        heartbeat_stale_trial_callback=on_stale)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError,
                    sqlalchemy.exc.ProgrammingError) as err:
                # Workers starting together on a new database race to create its tables and
                # version row (PostgreSQL: DuplicateTable, a ProgrammingError; SQLite: an
                # OperationalError); the loser finds them created on the next attempt.
                racing = isinstance(err, sqlalchemy.exc.IntegrityError) or \
                    "already exists" in str(err)
                if not racing or attempt == 5:
                    raise
                time.sleep(0.2 * attempt)
        raise AssertionError("unreachable")
    except sqlalchemy.exc.ArgumentError:
        scheme = url.split("://", 1)[0] if "://" in url else "no scheme"
        raise ConfigError(f"the tuning storage URL ({scheme}) is not a database URL; use "
                          "sqlite:///path or postgresql+psycopg://user:password@host/db") from None
    except sqlalchemy.exc.OperationalError as err:
        message = str(err).splitlines()[0]
        if password and password[1]:
            message = message.replace(password[1], "***")
        # from None: the chained error would carry the driver's arguments
        raise ServiceUnavailableError(f"tuning storage {redact(url)} is unreachable: "
                                      f"{message}") from None


# -- tune -----------------------------------------------------------------------------------------
def tune(frame: pd.DataFrame, config: DatasetConfig, *, candidate: str, storage_url: str,
         study: str, worker: int = 0, mlflow_client: Any = None, parent_run_id: str | None = None,
         experiment_id: str | None = None, grace_period: int = GRACE_PERIOD_S) -> dict[str, Any]:
    """Run trials of ``candidate`` on the training rows ``frame`` until ``study`` holds
    ``tuning.n_trials`` finished trials (complete + pruned, counting every worker's) or
    ``tuning.timeout_minutes`` pass; a call whose budget is already spent runs nothing.

    :param worker: this task's index among the tasks sharing the study (the map index); it
        seeds the sampler, and a trial this worker left RUNNING (a killed try) is failed at once.
        Two live tasks must never share one.
    :param mlflow_client: with ``parent_run_id``: every trial becomes a child run of it (in
        ``experiment_id``, default the parent's experiment).
    :param grace_period: seconds without a heartbeat after which another worker's RUNNING trial
        is failed as stale.
    :returns: a small dict: study, candidate, worker, trials_run (by this call), finished /
        complete / pruned / failed (in the study), best_value, best_params, metric, direction,
        seconds, stale_failed (trials this call failed as abandoned) and skipped (why nothing
        ran, or None).
    """
    import optuna
    from optuna.trial import TrialState
    from threadpoolctl import threadpool_limits

    _quiet_optuna()
    started = time.monotonic()
    space = _search_space(config, candidate)
    tuning, metric = config.training.tuning, config.comparison_metric
    direction = "maximize" if HIGHER_IS_BETTER[metric] else "minimize"
    frame = sample(frame, config, tuning.max_rows)
    folds = _folds(frame, config, tuning.cv_folds)
    stale: list[int] = []

    def on_stale(_: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        stale.append(trial.number)
        log.warning("Trial %d was left RUNNING without a heartbeat for over %ds (its task was "
                    "killed): failed it", trial.number, grace_period)

    rdb = storage(storage_url, grace_period=grace_period, on_stale=on_stale)
    the_study = _open_study(rdb, study, direction=direction, metric=metric, candidate=candidate,
                            n_trials=tuning.n_trials, seed=config.training.seed, worker=worker)
    tracker = (_Tracker(mlflow_client, parent_run_id=parent_run_id, experiment_id=experiment_id,
                        study=study, candidate=candidate, worker=worker, metric=metric)
               if mlflow_client is not None and parent_run_id else None)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(the_study)
    stale += _fail_own_leftovers(rdb, the_study, study, worker)
    if tracker:
        tracker.reconcile(the_study)

    before = {t.number for t in the_study.get_trials(deepcopy=False)}
    counts = _counts(the_study)
    taken = counts["complete"] + counts["pruned"] + counts["running"]
    skipped = None
    if taken >= tuning.n_trials:
        skipped = (f"budget already spent: {counts['complete'] + counts['pruned']} of "
                   f"{tuning.n_trials} trials finished, {counts['running']} running elsewhere")
        log.info("Study %s: %s; running no trial", study, skipped)
    else:
        objective = _Objective(frame, config, candidate=candidate, space=space, folds=folds,
                               metric=metric, n_trials=tuning.n_trials, worker=worker,
                               tracker=tracker)
        guard = _Guard(tuning.n_trials, worker)
        with threadpool_limits(limits=fit_threads(tuning.parallel_tasks)):
            the_study.optimize(
                objective, timeout=tuning.timeout_minutes * 60, gc_after_trial=False,
                catch=(ConfigError, ValueError, _Surplus),
                callbacks=[optuna.study.MaxTrialsCallback(
                    tuning.n_trials, states=(TrialState.COMPLETE, TrialState.PRUNED)), guard])
        if tracker:
            tracker.reconcile(the_study)

    trials = the_study.get_trials(deepcopy=False)
    mine = [t for t in trials if t.number not in before and t.user_attrs.get(WORKER_ATTR) == worker
            and not t.user_attrs.get(SURPLUS_ATTR)]
    counts = _counts(the_study)
    best = _best(the_study)
    result = {
        "study": study, "candidate": candidate, "worker": worker, "trials_run": len(mine),
        "finished": counts["complete"] + counts["pruned"], "complete": counts["complete"],
        "pruned": counts["pruned"], "failed": counts["failed"], "n_trials": tuning.n_trials,
        "best_value": best.value if best else None, "best_params": best.params if best else {},
        "metric": metric, "direction": direction, "seconds": round(time.monotonic() - started, 3),
        "stale_failed": len(stale), "skipped": skipped}
    log.info("Tuned %s (study %s, worker %d): %d trials in %.1fs; the study has %d/%d finished "
             "(%d complete, %d pruned), %d failed; best %s %s with %s", candidate, study, worker,
             len(mine), result["seconds"], result["finished"], tuning.n_trials, counts["complete"],
             counts["pruned"], counts["failed"], metric,
             "n/a" if best is None else f"{best.value:.4f}", _fmt(result["best_params"]))
    if mine and best is None and all(t.state == TrialState.FAIL for t in mine):
        reason = mine[0].user_attrs.get(REASON_ATTR, "see the task log")
        raise ConfigError(f"every trial of candidate {candidate!r} failed ({len(mine)}), e.g. "
                          f"trial {mine[0].number}: {reason}. Fix its search_space or "
                          "hyperparameters in the dataset config")
    return result


def _search_space(config: DatasetConfig, candidate: str) -> dict[str, Any]:
    config.candidate_view(candidate)  # ConfigError naming the candidates when unknown
    found = next(c for c in config.training.all_candidates if c.label == candidate)
    if not found.search_space:
        raise ConfigError(f"candidate {candidate!r} of dataset {config.name!r} has no "
                          "search_space: nothing to tune. Add one, or skip the tune step for it")
    return dict(found.search_space)


def fit_threads(parallel_tasks: int) -> int | None:
    """Threads each trial's fits may use: all of them for one tune task; with several, this
    machine's cores shared among them (several tune tasks of a study on one worker would
    otherwise each start a thread per core and slow each other down). None: no limit."""
    import os

    if parallel_tasks <= 1:
        return None
    return max(1, (os.cpu_count() or 1) // parallel_tasks)


def sample(frame: pd.DataFrame, config: DatasetConfig, max_rows: int | None) -> pd.DataFrame:
    """At most ``max_rows`` of the training rows for the trials: the same seeded sample for
    every worker and retry, stratified by the target for classification (when every class
    allows it). The best params then train on every row."""
    if max_rows is None or len(frame) <= max_rows:
        return frame
    from sklearn.model_selection import train_test_split

    from include.mlops_core import modeling

    stratify = None
    if config.task == "classification":
        y = modeling.target(frame, config)
        counts = y.value_counts()
        if len(counts) >= 2 and counts.min() >= 2:
            stratify = y
    kept, _ = train_test_split(frame, train_size=max_rows, random_state=config.training.seed,
                               stratify=stratify)
    return kept.reset_index(drop=True)


def _folds(frame: pd.DataFrame, config: DatasetConfig, k: int) -> list[tuple[Any, Any]]:
    """The same ``k`` folds for every trial and worker (seeded by the config)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    from include.mlops_core import modeling

    if len(frame) < 2 * k:
        raise DataError(f"{len(frame)} training rows cannot be cut into {k} cross-validation "
                        "folds; lower training.tuning.cv_folds or provide more rows")
    if config.task == "classification":
        counts = modeling.target(frame, config).value_counts()
        if len(counts) < 2 or counts.min() < k:
            raise DataError(f"target {config.target!r} needs at least {k} rows of each of two or "
                            f"more classes for {k} stratified folds; found "
                            f"{counts.to_dict()}. Lower training.tuning.cv_folds or fix the data")
        splitter: Any = StratifiedKFold(k, shuffle=True, random_state=config.training.seed)
        return list(splitter.split(frame, modeling.target(frame, config)))
    splitter = KFold(k, shuffle=True, random_state=config.training.seed)
    return list(splitter.split(frame))


def _open_study(rdb: optuna.storages.RDBStorage, name: str, *, direction: str, metric: str,
                candidate: str, n_trials: int, seed: int, worker: int) -> optuna.Study:
    """Create or load the study. The sampler is seeded by worker (parallel workers explore
    different points; TPE's constant liar keeps them off each other's running trials) and by
    the trials already there (a retry does not replay its first random points)."""
    import optuna

    try:
        existing = rdb.get_n_trials(rdb.get_study_id_from_name(name))
    except KeyError:
        existing = 0
    sampler = optuna.samplers.TPESampler(
        seed=seed + 1000 * worker + existing, constant_liar=True,
        n_startup_trials=min(10, max(2, n_trials // 3)))
    pruner = optuna.pruners.MedianPruner(n_startup_trials=max(2, min(5, n_trials // 4)),
                                         n_warmup_steps=0)
    the_study = optuna.create_study(study_name=name, storage=rdb, direction=direction,
                                    sampler=sampler, pruner=pruner, load_if_exists=True)
    if the_study.direction.name.lower() != direction:
        raise ConfigError(f"study {name!r} exists and {the_study.direction.name.lower()}s, but "
                          f"{metric} needs {direction}; the comparison metric changed within a "
                          "DAG run: start a new run")
    attrs = the_study.user_attrs
    for key, value in (("metric", metric), ("candidate", candidate), ("n_trials", n_trials)):
        if key not in attrs:
            the_study.set_user_attr(key, value)
    return the_study


def _fail_own_leftovers(rdb: optuna.storages.RDBStorage, the_study: optuna.Study, name: str,
                        worker: int) -> list[int]:
    """Fail the trials this worker left RUNNING: its previous try was killed (one task per
    worker index runs at a time), so they need not wait for the heartbeat's grace period."""
    import optuna
    from optuna.trial import TrialState

    failed = []
    study_id = rdb.get_study_id_from_name(name)
    for trial in the_study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if trial.user_attrs.get(WORKER_ATTR) != worker:
            continue
        trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        try:
            rdb.set_trial_user_attr(trial_id, REASON_ATTR,
                                    f"left running by an earlier try of worker {worker}")
            rdb.set_trial_state_values(trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue
        failed.append(trial.number)
        log.warning("Trial %d was left RUNNING by an earlier try of worker %d: failed it",
                    trial.number, worker)
    return failed


class _Guard:
    """After each trial: stop when the finished trials plus those other workers are running
    fill the budget, or when this worker's trials keep failing: none of its trials succeeded
    yet and ``min(n_trials, 10)`` (at least 3) failed, a broken search space; or failures
    outnumber the budget three to one, a mostly broken one (Optuna's samplers do not learn to
    avoid failing params)."""

    def __init__(self, n_trials: int, worker: int) -> None:
        self.n_trials = n_trials
        self.worker = worker
        self.failures = 0
        self.succeeded = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        from optuna.trial import TrialState

        if trial.state == TrialState.FAIL and not trial.user_attrs.get(SURPLUS_ATTR):
            self.failures += 1
        self.succeeded |= trial.state in (TrialState.COMPLETE, TrialState.PRUNED)
        if (not self.succeeded and self.failures >= max(3, min(self.n_trials, 10))) \
                or self.failures >= 3 * self.n_trials:
            log.warning("Worker %d: %d trials failed; stopping (check the search space)",
                        self.worker, self.failures)
            study.stop()
        taken = study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        if len(taken) >= self.n_trials:
            study.stop()


class _Objective:
    """One trial: suggest, cross-validate fold by fold (pruning), record in MLflow."""

    def __init__(self, frame: pd.DataFrame, config: DatasetConfig, *, candidate: str,
                 space: dict[str, Any], folds: list[tuple[Any, Any]], metric: str, n_trials: int,
                 worker: int, tracker: _Tracker | None) -> None:
        self.frame = frame
        self.config = config
        self.candidate = candidate
        self.space = space
        self.folds = folds
        self.metric = metric
        self.n_trials = n_trials
        self.worker = worker
        self.tracker = tracker

    def __call__(self, trial: optuna.Trial) -> float:
        import optuna

        from include.mlops_core import modeling

        trial.set_user_attr(WORKER_ATTR, self.worker)
        if self._over_budget(trial):
            trial.set_user_attr(SURPLUS_ATTR, True)
            trial.study.stop()
            log.info("Trial %d (worker %d): not run, other workers took the last of the %d "
                     "trials", trial.number, self.worker, self.n_trials)
            raise _Surplus(f"trial {trial.number}: the budget of {self.n_trials} trials was "
                           "taken by other workers")
        params = {name: _suggest(trial, name, dimension) for name, dimension in self.space.items()}
        run_id = self.tracker.start(trial.number, params) if self.tracker else None
        scores: list[float] = []
        try:
            trial_config = self.config.candidate_view(self.candidate, params)
            for fold, (fit_rows, check_rows) in enumerate(self.folds):
                model = modeling.train(self.frame.iloc[fit_rows], trial_config)
                score = modeling.metrics(model, self.frame.iloc[check_rows], trial_config)[self.metric]
                if not math.isfinite(score):
                    raise ValueError(f"{self.metric} is {score} on fold {fold}")
                scores.append(score)
                trial.report(fmean(scores), fold)
                if fold < len(self.folds) - 1 and trial.should_prune():
                    raise optuna.TrialPruned(f"{self.metric} {fmean(scores):.4f} after fold {fold} "
                                             "is behind the median of earlier trials")
        except optuna.TrialPruned as err:
            self._finish(run_id, "pruned", scores, str(err))
            log.info("Trial %d (worker %d) %s: pruned at fold %d (%s %.4f)", trial.number,
                     self.worker, _fmt(params), len(scores) - 1, self.metric, fmean(scores))
            raise
        except Exception as err:
            reason = f"{type(err).__name__}: {err}"[:1000]
            trial.set_user_attr(REASON_ATTR, reason)
            self._finish(run_id, "failed", scores, reason)
            log.info("Trial %d (worker %d) %s: failed: %s", trial.number, self.worker,
                     _fmt(params), reason)
            raise
        except BaseException:  # the task is being stopped: the trial fails (or goes stale)
            if run_id is not None and self.tracker is not None:
                self.tracker.finish(run_id, state="failed", scores=scores, status="KILLED",
                                    reason="the task was stopped during the trial")
            raise
        value = fmean(scores)
        self._finish(run_id, "complete", scores, None)
        log.info("Trial %d (worker %d) %s: %s %.4f (folds %s)", trial.number, self.worker,
                 _fmt(params), self.metric, value, ", ".join(f"{s:.4f}" for s in scores))
        return value

    def _over_budget(self, trial: optuna.Trial) -> bool:
        """Whether the trials numbered before this one (finished, or running elsewhere) already
        fill the budget: trial numbers are assigned under a lock, so of two workers racing for
        the last slot exactly one gets it."""
        from optuna.trial import TrialState

        ahead = trial.study.get_trials(deepcopy=False, states=(
            TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return sum(t.number < trial.number for t in ahead) >= self.n_trials

    def _finish(self, run_id: str | None, state: str, scores: list[float],
                reason: str | None) -> None:
        # MLflow first, then Optuna (which records the state after we return): a reconcile by
        # another worker never sees a finished trial whose child run is still running.
        if run_id is not None and self.tracker is not None:
            self.tracker.finish(run_id, state=state, scores=scores, reason=reason)


def _suggest(trial: optuna.Trial, name: str, dimension: Any) -> Any:
    if isinstance(dimension, IntRange):
        return trial.suggest_int(name, dimension.low, dimension.high, step=dimension.step,
                                 log=dimension.log)
    if isinstance(dimension, FloatRange):
        return trial.suggest_float(name, dimension.low, dimension.high, log=dimension.log)
    if isinstance(dimension, Categorical):
        return trial.suggest_categorical(name, list(dimension.choices))
    raise ConfigError(f"search space entry {name!r}: unknown type {type(dimension).__name__}")


# -- MLflow child runs ----------------------------------------------------------------------------
class _Tracker:
    """Every trial as a child run of the tune step's parent run, found by study + trial tags."""

    def __init__(self, client: Any, *, parent_run_id: str, experiment_id: str | None, study: str,
                 candidate: str, worker: int, metric: str) -> None:
        self.client = client
        self.parent_run_id = parent_run_id
        self.experiment_id = experiment_id or client.get_run(parent_run_id).info.experiment_id
        self.study = study
        self.candidate = candidate
        self.worker = worker
        self.metric = metric

    def _filter(self) -> str:
        return f"tags.`{STUDY_TAG}` = '{_quote(self.study)}'"

    def start(self, number: int, params: dict[str, Any]) -> str:
        """The child run of trial ``number`` (reused when one exists), with its params."""
        from mlflow.entities import Param

        found = self.client.search_runs(
            [self.experiment_id], filter_string=f"{self._filter()} and tags.`{TRIAL_TAG}` = "
                                                f"'{number}'", max_results=1)
        if found:
            run_id, logged = found[0].info.run_id, found[0].data.params
        else:
            run_id = self.client.create_run(
                self.experiment_id, run_name=f"{self.candidate}-trial-{number}",
                tags={PARENT_TAG: self.parent_run_id, STUDY_TAG: self.study,
                      TRIAL_TAG: str(number), CANDIDATE_TAG: self.candidate,
                      WORKER_TAG: str(self.worker)}).info.run_id
            logged = {}
        params = [Param(k, str(v)) for k, v in params.items() if k not in logged]
        if params:
            self.client.log_batch(run_id, params=params)
        return run_id

    def finish(self, run_id: str, *, state: str, scores: list[float], reason: str | None,
               status: str | None = None) -> None:
        from mlflow.entities import Metric, RunTag

        now = int(time.time() * 1000)
        key = f"cv_{self.metric}"
        metrics = [Metric(f"{key}_fold", score, now, fold) for fold, score in enumerate(scores)]
        if scores:
            metrics.append(Metric(key, fmean(scores), now, 0))
        tags = [RunTag(STATE_TAG, state)] + ([RunTag(REASON_TAG, reason[:5000])] if reason else [])
        self.client.log_batch(run_id, metrics=metrics, tags=tags)
        self.terminate(run_id, status=status or RUN_STATUS[state])

    def terminate(self, run_id: str, *, status: str) -> None:
        self.client.set_terminated(run_id, status=status)

    def reconcile(self, the_study: optuna.Study) -> int:
        """Close the child runs still RUNNING whose trial is over (their task was killed, and
        the trial failed as stale): KILLED, with the trial's state. Returns how many."""
        from mlflow.entities import RunTag
        from optuna.trial import TrialState

        running = self.client.search_runs(
            [self.experiment_id], filter_string=f"{self._filter()} and attributes.status = "
                                                "'RUNNING'", max_results=1000)
        if not running:
            return 0
        trials = {t.number: t for t in the_study.get_trials(deepcopy=False)}
        names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
                 TrialState.FAIL: "failed"}
        closed = 0
        for run in running:
            trial = trials.get(int(run.data.tags.get(TRIAL_TAG, -1)))
            if trial is None or trial.state not in names:
                continue  # still running in a live worker (or not a trial of this study)
            reason = trial.user_attrs.get(REASON_ATTR) or (
                "its task ended without finishing the trial (killed); failed as stale")
            self.client.log_batch(run.info.run_id, tags=[
                RunTag(STATE_TAG, names[trial.state]), RunTag(REASON_TAG, reason)])
            self.terminate(run.info.run_id, status="KILLED")
            closed += 1
            log.info("Child run %s of trial %d was left running: marked KILLED",
                     run.info.run_id, trial.number)
        return closed


def _quote(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\'")


# -- reading a study ------------------------------------------------------------------------------
def summary(storage_url: str, study: str) -> dict[str, Any]:
    """What the tune step found: best value, params and trial number, and trial counts by state
    (for the train step and the promotion card)."""
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        the_study = optuna.load_study(study_name=study, storage=storage(storage_url))
    except KeyError:
        raise ConfigError(f"no tuning study {study!r} in {redact(storage_url)}; the tune step "
                          "did not run for this DAG run and candidate (or used another "
                          "storage): run it first, or train without tuning") from None
    best = _best(the_study)
    counts = _counts(the_study)
    if best is None:
        raise ConfigError(f"tuning study {study!r} has no complete trial ({counts}); every trial "
                          "failed or was pruned: check the search_space and the tune task log, "
                          "then rerun the tune step")
    attrs = the_study.user_attrs
    return {"study": study, "metric": attrs.get("metric"), "candidate": attrs.get("candidate"),
            "direction": the_study.direction.name.lower(), "best_value": best.value,
            "best_params": dict(best.params), "best_trial": best.number,
            "n_trials": attrs.get("n_trials"), "trials": counts}


def best_params(storage_url: str, study: str) -> dict[str, Any]:
    """The best trial's params, typed as the search space says (int, float, or the choice)."""
    return summary(storage_url, study)["best_params"]


def _best(the_study: optuna.Study) -> optuna.trial.FrozenTrial | None:
    try:
        return the_study.best_trial
    except ValueError:  # no complete trial
        return None


def _counts(the_study: optuna.Study) -> dict[str, int]:
    from optuna.trial import TrialState

    counts = {"complete": 0, "pruned": 0, "failed": 0, "running": 0, "waiting": 0, "surplus": 0}
    names = {TrialState.COMPLETE: "complete", TrialState.PRUNED: "pruned",
             TrialState.FAIL: "failed", TrialState.RUNNING: "running",
             TrialState.WAITING: "waiting"}
    for trial in the_study.get_trials(deepcopy=False):
        surplus = trial.state == TrialState.FAIL and trial.user_attrs.get(SURPLUS_ATTR)
        counts["surplus" if surplus else names[trial.state]] += 1
    return counts


def _fmt(params: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v!r}"
                           for k, v in params.items()) + "}"
