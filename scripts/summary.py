"""Trigger, follow and summarise a training DAG run of the local stack (used by ``deploy.sh``).

    python scripts/summary.py run --run-id 'scheduled__2026-11-23T00:00:00+00:00' \\
        --logical-date 2026-11-23T00:00:00Z
    python scripts/summary.py show 'scheduled__2026-11-23T00:00:00+00:00'

``run`` (see ``start_run``) waits until the DAG is parsed and unpauses it, so that its daily
schedule creates the run for the latest complete day: ``--run-id`` is that run's id,
``scheduled__<today>T00:00:00+00:00`` (logical date yesterday 00:00, data interval yesterday →
today). A run with that id that exists already is shown, not repeated; ``--rerun`` clears it so
that it runs again. Otherwise ``run`` waits up to 60 s for the scheduler to create it; only if it
does not appear is ``deploy_local__<date of --logical-date>`` triggered through the REST API with
``--logical-date`` (today 00:00, whose manual data interval is also yesterday → today). Then it
follows the run and prints the summary: run and task states, the gate decision with every
reason, key metrics, the registered model version and whether it is ``@champion``, and the UI
links. A run that ``check_changed`` skipped shows that task's reason (from its XCom) and has no
MLflow run. A failed run shows the failed task's last log lines.

Reads ``MLOPS_AIRFLOW_URL``, ``MLOPS_MLFLOW_URL``, ``MLOPS_AIRFLOW_OPERATOR_PASSWORD`` (Airflow user
``operator``, who may trigger) and ``MLOPS_MLFLOW_VIEWER_PASSWORD`` (MLflow user ``viewer``, read
only) from the environment; ``deploy.sh`` passes them from ``.env`` to this command alone. The Airflow side uses the
REST API v2 through Airflow's own client (apache-airflow-client), the MLflow side finds the run by its ``airflow.dag_id`` / ``airflow.run_id`` tags.
Exit status: 0 when the DAG run succeeded, 1 when it failed, 3 on timeout, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable, Container
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import parse_qsl, quote

import requests
import urllib3
from airflow_client.client import (
    ApiClient,
    Configuration,
    DAGApi,
    DAGPatchBody,
    DagRunApi,
    DAGRunClearBody,
    ImportErrorApi,
    TaskApi,
    TaskInstanceApi,
    TriggerDAGRunPostBody,
    XComApi,
)
from airflow_client.client.exceptions import ApiException
from requests.adapters import HTTPAdapter

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from include.mlops_core.tracking import DAG_ID_TAG, RUN_ID_TAG, alias_version  # noqa: E402

FINISHED = {"success", "failed"}
HEADLINE_METRICS = ("roc_auc", "accuracy", "f1", "log_loss", "rmse", "mae", "r2")
TIMEOUT = 30.0  # s, per request
T = TypeVar("T")


def _retries() -> urllib3.Retry:
    """An api-server that is busy or restarting refuses connections for a few seconds: every
    request is retried then (about 25 s in all). A request that was sent and got no answer is
    retried only when repeating it is harmless (GET, PUT, DELETE; not POST or PATCH)."""
    return urllib3.Retry(total=5, connect=5, read=2, backoff_factor=1, backoff_max=10)


@dataclass(frozen=True)
class Response:
    """The answer to :meth:`AirflowApi.request`: its status and body."""

    status_code: int
    content: bytes

    def json(self) -> Any:
        return json.loads(self.content)

    @property
    def text(self) -> str:
        return self.content.decode(errors="replace")


class AirflowApi:
    """Airflow's REST API v2 as one user, through Airflow's own Python client
    (``apache-airflow-client``): its typed APIs (``dag_api``, ``dag_run_api``, ...) called
    through :meth:`call`, which logs in (a JWT from ``POST /auth/token``, renewed once when it
    expires) and turns an error answer into SystemExit with Airflow's message. :meth:`request` and
    :meth:`json` reach any other endpoint by its path (the tests use them)."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        # Links printed for people: the address their browser uses (MLOPS_AIRFLOW_UI_URL) when
        # this script reaches the server by another (inside the compose network).
        self.ui_url = os.environ.get("MLOPS_AIRFLOW_UI_URL", self.url).rstrip("/")
        self._auth = {"username": username, "password": password}
        # The client has no login call for the token; requests with the same retries gets it.
        self._login = requests.Session()
        self._login.trust_env = False  # as the client: no proxy from the environment
        self._login.mount(self.url, HTTPAdapter(max_retries=_retries()))
        self.configuration = Configuration(host=self.url, retries=_retries())
        self.client = ApiClient(self.configuration)
        self.dag_api = DAGApi(self.client)
        self.dag_run_api = DagRunApi(self.client)
        self.task_instance_api = TaskInstanceApi(self.client)
        self.task_api = TaskApi(self.client)
        self.xcom_api = XComApi(self.client)
        self.import_error_api = ImportErrorApi(self.client)

    def _token(self) -> None:
        if self.configuration.access_token is not None:
            return
        try:
            response = self._login.post(f"{self.url}/auth/token", json=self._auth,
                                        timeout=TIMEOUT)
        except requests.RequestException as err:
            raise self._unreachable(err) from err
        if response.status_code >= 300:
            raise SystemExit(f"Airflow at {self.url} refused the login for user "
                             f"{self._auth['username']!r} (HTTP {response.status_code}); the "
                             f"password is MLOPS_AIRFLOW_{self._auth['username'].upper()}"
                             "_PASSWORD in .env")
        self.configuration.access_token = response.json()["access_token"]

    def _unreachable(self, err: Exception) -> SystemExit:
        return SystemExit(f"Airflow api-server at {self.url} does not answer: {err}. "
                          "Check ./deploy.sh status")

    def call(self, operation: Callable[..., T], *args: Any, missing: Container[int] = (),
             **kwargs: Any) -> T | None:
        """``operation(*args, **kwargs)``, a method of one of the typed APIs (e.g.
        ``api.call(api.dag_run_api.get_dag_run, dag_id, run_id)``), logged in. None when Airflow
        answers with a status in ``missing`` (e.g. 404); SystemExit on any other error. A
        ``..._without_preload_content`` operation answers whatever the status, undecoded."""
        kwargs.setdefault("_request_timeout", TIMEOUT)
        for attempt in range(2):
            self._token()
            try:
                answer = operation(*args, **kwargs)
                if isinstance(answer, urllib3.BaseHTTPResponse) and answer.status == 401 \
                        and attempt == 0:
                    self.configuration.access_token = None  # expired token: log in again once
                    continue
                return answer
            except ApiException as err:
                if err.status == 401 and attempt == 0:
                    self.configuration.access_token = None  # expired token: log in again once
                    continue
                if err.status in missing:
                    return None
                raise SystemExit(f"Airflow API {operation.__name__}: HTTP {err.status}: "
                                 f"{str(err.body)[:500]}") from err
            except urllib3.exceptions.HTTPError as err:
                raise self._unreachable(err) from err
        raise AssertionError("not reached: the second try returns or raises")

    def request(self, method: str, path: str, *, params: dict[str, Any] | None = None,
                json: Any = None) -> Response:
        """Any endpoint by its path (``/api/v2/...``, a query allowed), through the client's
        ApiClient with the token and retries: the answer whatever its status."""
        path, _, query = path.partition("?")
        query_params = parse_qsl(query, keep_blank_values=True) + list((params or {}).items())
        for attempt in range(2):
            self._token()
            headers = {"Accept": "application/json"}  # param_serialize adds the token to it
            if json is not None:
                headers["Content-Type"] = "application/json"
            serialized = self.client.param_serialize(
                method, path, query_params=query_params, header_params=headers, body=json,
                auth_settings=["HTTPBearer"])
            try:
                answer = self.client.call_api(*serialized, _request_timeout=TIMEOUT)
            except urllib3.exceptions.HTTPError as err:
                raise self._unreachable(err) from err
            if answer.status != 401 or attempt:
                return Response(answer.status, answer.read() or b"")
            self.configuration.access_token = None  # expired token: log in again once
        raise AssertionError("not reached: the second try returns or raises")

    def json(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        """The JSON answer of :meth:`request`; SystemExit unless its status is in ``ok``."""
        response = self.request(method, path, **kwargs)
        if response.status_code not in ok:
            raise SystemExit(f"Airflow API {method} {path}: HTTP {response.status_code}: "
                             f"{response.text[:500]}")
        return response.json() if response.content else None


def _plain(model: Any) -> Any:
    """A typed answer as the REST API's JSON (dates and states as strings), None as None."""
    return None if model is None else model.model_dump(mode="json", by_alias=True)


def _say(message: str) -> None:
    print(message, flush=True)


# -- run ---------------------------------------------------------------------------------------------
def wait_for_dag(api: AirflowApi, dag_id: str, timeout: float) -> dict[str, Any]:
    """The DAG once the dag-processor has parsed and serialized it; import errors fail fast."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        dag = api.call(api.dag_api.get_dag, dag_id, missing=(404,))
        # serialized, not only known: its details are there
        if dag is not None and api.call(api.dag_api.get_dag_details, dag_id, missing=(404,)):
            return _plain(dag)
        errors = api.call(api.import_error_api.get_import_errors).import_errors
        if errors:
            lines = "\n".join(f"  {e.filename}:\n    " +
                              str(e.stack_trace or "").strip().replace("\n", "\n    ")[-1500:]
                              for e in errors)
            raise SystemExit(f"DAG files failed to import:\n{lines}")
        if time.monotonic() > deadline:
            raise SystemExit(f"DAG {dag_id!r} did not appear within {timeout:.0f}s; see "
                             ".local/logs/dag-processor.log")
        if not said:
            _say(f"  waiting for the dag-processor to parse {dag_id!r} ...")
            said = True
        time.sleep(2)


def start_run(api: AirflowApi, dag_id: str, run_id: str, logical_date: str, rerun: bool) -> str:
    """Unpause the DAG so that its daily schedule runs the latest complete interval; return the
    id of the run to follow.

    ``run_id`` is the scheduler's id for that interval (``scheduled__<run after>``, i.e. today
    00:00; its logical date is yesterday 00:00). When the scheduler has not created it within a
    minute, the run is triggered through the REST API with ``logical_date`` (today 00:00, whose
    manual data interval is also yesterday → today) under ``deploy_local__<date>``. A run that exists is shown, not
    repeated (``rerun`` clears it first).
    """
    dag = wait_for_dag(api, dag_id, timeout=300)
    if dag.get("is_paused"):
        api.call(api.dag_api.patch_dag, dag_id, DAGPatchBody(is_paused=False))
        _say(f"  unpaused DAG {dag_id!r}: the scheduler runs the latest complete day")
    existing = _plain(api.call(api.dag_run_api.get_dag_run, dag_id, run_id, missing=(404,)))
    if existing is not None:
        state = existing.get("state")
        if rerun:
            api.call(api.dag_run_api.clear_dag_run, dag_id, run_id, DAGRunClearBody(dry_run=False))
            _say(f"  DAG run {run_id!r} existed ({state}); cleared it to run again (--rerun)")
        else:
            _say(f"  DAG run {run_id!r} exists already ({state}); not creating another "
                 "(./deploy.sh local --rerun clears and re-runs it)")
        return run_id
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(2)
        if api.call(api.dag_run_api.get_dag_run, dag_id, run_id, missing=(404,)) is not None:
            _say(f"  the scheduler created DAG run {run_id!r}")
            return run_id
    manual_id = f"deploy_local__{logical_date[:10]}"
    if api.call(api.dag_run_api.get_dag_run, dag_id, manual_id, missing=(404,)) is None:
        api.call(api.dag_run_api.trigger_dag_run, dag_id, TriggerDAGRunPostBody(
            dag_run_id=manual_id, logical_date=logical_date, conf={},
            note="Triggered by ./deploy.sh local"))
        _say(f"  triggered DAG run {manual_id!r} through the REST API")
    return manual_id


def follow(api: AirflowApi, dag_id: str, run_id: str, timeout: float,
           quiet_if_finished: bool = False) -> dict[str, Any]:
    """Poll until the run finishes, printing each task's state changes."""
    started = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        run = _plain(api.call(api.dag_run_api.get_dag_run, dag_id, run_id))
        if quiet_if_finished and run.get("state") in FINISHED:
            return run  # finished before we looked: the summary shows it
        quiet_if_finished = False
        for ti in task_instances(api, dag_id, run_id):
            state = ti.get("state") or "none"
            if seen.get(ti["task_id"]) != state and state != "none":
                seen[ti["task_id"]] = state
                _say(f"  [{time.monotonic() - started:5.0f}s] {ti['task_id']:<15} {state}")
        if run.get("state") in FINISHED:
            return run
        if time.monotonic() - started > timeout:
            _say(f"  DAG run {run_id!r} still {run.get('state')} after {timeout:.0f}s; it goes on "
                 "in the background")
            return run
        time.sleep(3)


def task_instances(api: AirflowApi, dag_id: str, run_id: str) -> list[dict[str, Any]]:
    """The run's task instances as the REST API's JSON objects (one per map index)."""
    found = api.call(api.task_instance_api.get_task_instances, dag_id, run_id, limit=100)
    return [_plain(ti) for ti in found.task_instances]


def task_order(api: AirflowApi, dag_id: str) -> list[str]:
    """Task ids in dependency order (the DAG's tasks endpoint lists them alphabetically)."""
    tasks = api.call(api.task_api.get_tasks, dag_id).tasks
    downstream = {t.task_id: t.downstream_task_ids or [] for t in tasks}
    upstream_count = {task: 0 for task in downstream}
    for children in downstream.values():
        for child in children:
            upstream_count[child] = upstream_count.get(child, 0) + 1
    ready = sorted(t for t, n in upstream_count.items() if n == 0)
    order: list[str] = []
    while ready:
        task = ready.pop(0)
        order.append(task)
        for child in downstream.get(task, []):
            upstream_count[child] -= 1
            if upstream_count[child] == 0:
                ready.append(child)
    return order


# -- summary ---------------------------------------------------------------------------------------
def _duration(start: str | None, end: str | None) -> str:
    if not start or not end:
        return ""
    seconds = (datetime.fromisoformat(end) - datetime.fromisoformat(start)).total_seconds()
    return f"{int(seconds // 60)}m{seconds % 60:04.1f}s" if seconds >= 60 else f"{seconds:.1f}s"


def summarize(api: AirflowApi, mlflow_url: str, dag_id: str, run_id: str) -> str:
    run = _plain(api.call(api.dag_run_api.get_dag_run, dag_id, run_id))
    state = run.get("state")
    tis = {ti["task_id"]: ti for ti in task_instances(api, dag_id, run_id)}
    order = [t for t in task_order(api, dag_id) if t in tis] + sorted(set(tis) - set(task_order(api, dag_id)))
    _say("")
    _say(f"DAG run {dag_id} / {run_id}: {str(state).upper()}"
         + (f" in {_duration(run.get('start_date'), run.get('end_date'))}" if state in FINISHED else ""))
    _say(f"  logical date {run.get('logical_date')}; data interval "
         f"{run.get('data_interval_start')} -> {run.get('data_interval_end')}")
    _say("  tasks:")
    for task_id in order:
        ti = tis[task_id]
        tries = f" (try {ti.get('try_number')})" if (ti.get("try_number") or 0) > 1 else ""
        _say(f"    {task_id:<15} {str(ti.get('state') or 'none'):<16} "
             f"{_duration(ti.get('start_date'), ti.get('end_date')):>8}{tries}")

    if tis.get("check_changed", {}).get("state") == "success" and \
            tis.get("ingest", {}).get("state") == "skipped":
        xcom = api.call(api.xcom_api.get_xcom_entry, dag_id, "check_changed", run_id,
                        "return_value", missing=(404,))
        reason = xcom.actual_instance.value if xcom is not None else None
        reason = {} if reason is None else reason
        if isinstance(reason, str):
            try:
                reason = json.loads(reason)
            except ValueError:
                reason = {"reason": reason}
        _say(f"  training skipped: {reason.get('reason', 'nothing changed since the champion')}")
        if "already produced champion" not in str(reason.get("reason", "")):
            _say("  (trigger with conf {\"force\": true} to retrain; a skipped run opens no "
                 "MLflow run)")
    else:
        mlflow_summary(mlflow_url, dag_id, run_id, tis)

    failed = [t for t in order if tis[t].get("state") == "failed"]
    for task_id in failed[:1]:
        show_log_tail(api, dag_id, run_id, tis[task_id])
    _other_runs(api, dag_id, run_id)
    _say("")
    _say(f"Airflow UI: {api.ui_url}/dags/{dag_id}  (this run: {api.ui_url}/dags/{dag_id}/runs/"
         f"{quote(run_id, safe='')})")
    _say(f"MLflow UI:  {_mlflow_ui(mlflow_url)}")
    return str(state)


def _mlflow_ui(mlflow_url: str) -> str:
    """The MLflow address printed for people (MLOPS_MLFLOW_UI_URL, else the one used here)."""
    return os.environ.get("MLOPS_MLFLOW_UI_URL", mlflow_url).rstrip("/")


def mlflow_summary(mlflow_url: str, dag_id: str, run_id: str, tis: dict[str, Any]) -> None:
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "2")
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "20")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    if os.environ.get("MLOPS_MLFLOW_VIEWER_PASSWORD"):  # MLflow's read-only account
        os.environ["MLFLOW_TRACKING_USERNAME"] = "viewer"
        os.environ["MLFLOW_TRACKING_PASSWORD"] = os.environ["MLOPS_MLFLOW_VIEWER_PASSWORD"]
    try:
        import mlflow.artifacts
        from mlflow import MlflowClient

        mlflow.set_tracking_uri(mlflow_url)  # mlflow.artifacts resolves runs:/ URIs with it
        client = MlflowClient(tracking_uri=mlflow_url, registry_uri=mlflow_url)
        experiments = [e.experiment_id for e in client.search_experiments()]
        runs = client.search_runs(
            experiments, max_results=1, order_by=["attributes.start_time ASC"],
            filter_string=f"tags.`{DAG_ID_TAG}` = '{dag_id}' and tags.`{RUN_ID_TAG}` = '{run_id}'")
    except Exception as err:  # noqa: BLE001 - the Airflow half of the summary is still useful
        _say(f"  MLflow at {mlflow_url}: could not read the run ({type(err).__name__}: {err})")
        return
    if not runs:
        _say("  MLflow: no run tagged with this DAG run (none is opened before ingest runs)")
        return
    mlrun = runs[0]
    info, tags, metrics = mlrun.info, mlrun.data.tags, mlrun.data.metrics
    _say(f"  MLflow run {info.run_id} ({info.status}, outcome {tags.get('mlops.outcome', '-')}): "
         f"{_mlflow_ui(mlflow_url)}/#/experiments/{info.experiment_id}/runs/{info.run_id}")

    def artifact(path: str) -> dict[str, Any] | None:
        try:
            return mlflow.artifacts.load_dict(f"runs:/{info.run_id}/{path}")
        except Exception:  # noqa: BLE001 - not written by this run (e.g. skipped stages)
            return None

    manifest = artifact("data/manifest.json")
    if manifest:
        _say(f"  data: {', '.join(manifest.get('partitions', []))}; "
             f"{manifest.get('row_count')} rows; fingerprint {str(manifest.get('fingerprint'))[:12]}")
    headline = {k: metrics[k] for k in HEADLINE_METRICS if k in metrics}
    if headline:
        champion = {k: metrics[f"champion.{k}"] for k in headline if f"champion.{k}" in metrics}
        _say("  held-out metrics: " + ", ".join(
            f"{k} {v:.4f}" + (f" (champion {champion[k]:.4f})" if k in champion else "")
            for k, v in headline.items()))
    card = artifact("promotion_card.json")
    if card:
        decision = card.get("decision", {})
        _say(f"  gate: {'APPROVED' if decision.get('approved') else 'REJECTED'}")
        for reason in decision.get("reasons", []):
            _say(f"    {reason}")
    elif tis.get("gate", {}).get("state") == "success":
        _say("  gate: ran, but its promotion card is not in the MLflow run")

    try:
        versions = client.search_model_versions(f"run_id = '{info.run_id}'")
    except Exception as err:  # noqa: BLE001
        _say(f"  model registry: could not search ({err})")
        return
    if not versions:
        _say("  model: not registered by this run")
    for version in versions:
        try:
            champion = alias_version(client, version.name)
        except Exception:  # noqa: BLE001 - the registry could not say; the rest is still useful
            champion = None
        champion_version = champion.version if champion is not None else None
        is_champion = str(champion_version) == str(version.version)
        _say(f"  model: {version.name} v{version.version} "
             + ("is @champion" if is_champion else
                f"(not @champion; @champion is v{champion_version})" if champion_version else
                "(no @champion yet)")
             + f": {_mlflow_ui(mlflow_url)}/#/models/{quote(version.name, safe='')}/versions/{version.version}")


def log_entries(api: AirflowApi, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[Any] | None:
    """The task's log of its latest try (structured entries); None when the API has none."""
    attempt = max(int(ti.get("try_number") or 1), 1)
    # A mapped task's instances (train, tune) are told apart by their map index. The answer is
    # read as JSON: the client's model of a record keeps only its event and timestamp (not its
    # level, logger, error_detail).
    answer = api.call(api.task_instance_api.get_log_without_preload_content, dag_id, run_id,
                      ti["task_id"], attempt, full_content=True,
                      map_index=int(ti.get("map_index", -1)))
    if answer.status != 200:
        return None
    return json.loads(answer.data).get("content", [])


def last_error(entries: list[Any]) -> str:
    """The exception message of the last error in a log, else its last error line."""
    for entry in reversed(entries):
        if isinstance(entry, dict) and str(entry.get("level", "")).lower() in ("error", "critical"):
            details = entry.get("error_detail") or []
            return str(details[0].get("exc_value") if details else entry.get("event"))
    return "see its log"


def log_lines(api: AirflowApi, dag_id: str, run_id: str, ti: dict[str, Any]) -> list[str] | None:
    """The task's log of its latest try as text lines; None when the API has none."""
    entries = log_entries(api, dag_id, run_id, ti)
    if entries is None:
        return None
    rendered: list[str] = []
    for entry in entries:
        if isinstance(entry, str):
            rendered += entry.splitlines()
            continue
        event = str(entry.get("event", ""))
        level = str(entry.get("level", "")).upper()
        stamp = str(entry.get("timestamp", ""))[11:19]
        rendered.append(f"{stamp} {level:<7} {event}".rstrip())
        for detail in entry.get("error_detail") or []:
            rendered.append(f"         {detail.get('exc_type')}: {detail.get('exc_value')}")
    return rendered


def show_log_tail(api: AirflowApi, dag_id: str, run_id: str, ti: dict[str, Any],
                  lines: int = 20) -> None:
    task_id, attempt = ti["task_id"], max(int(ti.get("try_number") or 1), 1)
    _say(f"\n  failed task {task_id} (try {attempt}): last log lines "
         f"({api.ui_url}/dags/{dag_id}/runs/{quote(run_id, safe='')}/tasks/{task_id}):")
    rendered = log_lines(api, dag_id, run_id, ti)
    if rendered is None:
        _say("    (log not available from the API; see .local/airflow/logs/)")
        return
    rendered = [line for line in rendered if "::group::" not in line and "::endgroup::" not in line]
    for line in rendered[-lines:]:
        _say(f"    {line[:400]}")


def _other_runs(api: AirflowApi, dag_id: str, run_id: str) -> None:
    """Recent other runs (the daily schedule adds one when the DAG is unpaused), with the reason
    of a failure in one line."""
    recent = api.call(api.dag_run_api.get_dag_runs, dag_id, limit=5, order_by=["-run_after"])
    others = [_plain(r) for r in recent.dag_runs if r.dag_run_id != run_id]
    if not others:
        return
    _say("  other recent runs of this DAG:")
    for other in others:
        _say(f"    {other.get('dag_run_id'):<40} {other.get('run_type'):<10} {other.get('state')}")
        if other.get("state") != "failed":
            continue
        failed = [ti for ti in task_instances(api, dag_id, other["dag_run_id"])
                  if ti.get("state") == "failed"]
        if not failed:
            continue
        reason = last_error(log_entries(api, dag_id, other["dag_run_id"], failed[0]) or [])
        _say(f"      {failed[0]['task_id']} failed: {reason[:400]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="create (or reuse) a DAG run, follow it, print the summary")
    run.add_argument("--dag-id", default="training")
    run.add_argument("--run-id", required=True)
    run.add_argument("--logical-date", required=True, help="e.g. 2025-01-04T00:00:00Z")
    run.add_argument("--timeout", type=float, default=900)
    run.add_argument("--rerun", action="store_true", help="clear an existing run and run it again")
    show = sub.add_parser("show", help="print the summary of one DAG run")
    show.add_argument("run_id")
    show.add_argument("--dag-id", default="training")
    args = parser.parse_args(argv)

    password = os.environ.get("MLOPS_AIRFLOW_OPERATOR_PASSWORD")
    if not password:
        parser.error("MLOPS_AIRFLOW_OPERATOR_PASSWORD is not set (run through ./deploy.sh, which "
                     "reads .env)")
    api = AirflowApi(os.environ.get("MLOPS_AIRFLOW_URL", "http://127.0.0.1:8080"), "operator",
                     password)
    mlflow_url = os.environ.get("MLOPS_MLFLOW_URL", "http://127.0.0.1:5000")
    if args.command == "run":
        args.run_id = start_run(api, args.dag_id, args.run_id, args.logical_date, args.rerun)
        final = follow(api, args.dag_id, args.run_id, args.timeout, quiet_if_finished=True)
        state = summarize(api, mlflow_url, args.dag_id, args.run_id)
        if final.get("state") not in FINISHED:
            return 3
    else:
        state = summarize(api, mlflow_url, args.dag_id, args.run_id)
    return 0 if state == "success" else 1


if __name__ == "__main__":
    sys.exit(main())
