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
REST API v2, the MLflow side finds the run by its ``airflow.dag_id`` / ``airflow.run_id`` tags.
Exit status: 0 when the DAG run succeeded, 1 when it failed, 3 on timeout, 2 on usage errors.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from include.mlops.tracking import DAG_ID_TAG, RUN_ID_TAG, alias_version  # noqa: E402

FINISHED = {"success", "failed"}
HEADLINE_METRICS = ("roc_auc", "accuracy", "f1", "log_loss", "rmse", "mae", "r2")


class AirflowApi:
    """The few REST API v2 calls we need, with a JWT from ``POST /auth/token``."""

    def __init__(self, url: str, username: str, password: str) -> None:
        self.url = url.rstrip("/")
        # Links printed for people: the address their browser uses (MLOPS_AIRFLOW_UI_URL) when
        # this script reaches the server by another (inside the compose network).
        self.ui_url = os.environ.get("MLOPS_AIRFLOW_UI_URL", self.url).rstrip("/")
        self._auth = {"username": username, "password": password}
        self._http = httpx.Client(base_url=self.url, timeout=30)
        self._token: str | None = None

    def _headers(self) -> dict[str, str]:
        if self._token is None:
            response = self._http.post("/auth/token", json=self._auth)
            if response.status_code >= 300:
                raise SystemExit(f"Airflow at {self.url} refused the login for user "
                                 f"{self._auth['username']!r} (HTTP {response.status_code}); the "
                                 f"password is MLOPS_AIRFLOW_{self._auth['username'].upper()}"
                                 "_PASSWORD in .env")
            self._token = response.json()["access_token"]
        return {"Authorization": f"Bearer {self._token}", "Accept": "application/json"}

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        for attempt in range(5):
            try:
                response = self._http.request(method, path, headers=self._headers(), **kwargs)
            except httpx.TransportError as err:  # api-server busy or restarting: retry a little
                if attempt == 4:
                    raise SystemExit(f"Airflow api-server at {self.url} does not answer: {err}. "
                                     "Check ./deploy.sh status") from err
                time.sleep(2 * (attempt + 1))
                continue
            if response.status_code == 401 and attempt == 0:
                self._token = None  # expired token: log in again once
                continue
            return response
        return response

    def json(self, method: str, path: str, *, ok: tuple[int, ...] = (200,), **kwargs: Any) -> Any:
        response = self.request(method, path, **kwargs)
        if response.status_code not in ok:
            raise SystemExit(f"Airflow API {method} {path}: HTTP {response.status_code}: "
                             f"{response.text[:500]}")
        return response.json() if response.content else None


def _run_path(dag_id: str, run_id: str) -> str:
    return f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns/{quote(run_id, safe='')}"


def _say(message: str) -> None:
    print(message, flush=True)


# -- run ---------------------------------------------------------------------------------------------
def wait_for_dag(api: AirflowApi, dag_id: str, timeout: float) -> dict[str, Any]:
    """The DAG once the dag-processor has parsed and serialized it; import errors fail fast."""
    deadline = time.monotonic() + timeout
    said = False
    while True:
        response = api.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}")
        if response.status_code == 200:
            details = api.request("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/details")
            if details.status_code == 200:  # serialized, not only known
                return response.json()
        errors = api.json("GET", "/api/v2/importErrors").get("import_errors", [])
        if errors:
            lines = "\n".join(f"  {e.get('filename')}:\n    " +
                              str(e.get("stack_trace", "")).strip().replace("\n", "\n    ")[-1500:]
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
        api.json("PATCH", f"/api/v2/dags/{quote(dag_id, safe='')}", json={"is_paused": False})
        _say(f"  unpaused DAG {dag_id!r}: the scheduler runs the latest complete day")
    path = _run_path(dag_id, run_id)
    existing = api.request("GET", path)
    if existing.status_code == 200:
        state = existing.json().get("state")
        if rerun:
            api.json("POST", f"{path}/clear", json={"dry_run": False})
            _say(f"  DAG run {run_id!r} existed ({state}); cleared it to run again (--rerun)")
        else:
            _say(f"  DAG run {run_id!r} exists already ({state}); not creating another "
                 "(./deploy.sh local --rerun clears and re-runs it)")
        return run_id
    deadline = time.monotonic() + 60
    while existing.status_code == 404 and time.monotonic() < deadline:
        time.sleep(2)
        existing = api.request("GET", path)
    if existing.status_code == 200:
        _say(f"  the scheduler created DAG run {run_id!r}")
        return run_id
    manual_id = f"deploy_local__{logical_date[:10]}"
    manual_path = _run_path(dag_id, manual_id)
    if api.request("GET", manual_path).status_code == 404:
        api.json("POST", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns", ok=(200, 201), json={
            "dag_run_id": manual_id, "logical_date": logical_date, "conf": {},
            "note": "Triggered by ./deploy.sh local"})
        _say(f"  triggered DAG run {manual_id!r} through the REST API")
    return manual_id


def follow(api: AirflowApi, dag_id: str, run_id: str, timeout: float,
           quiet_if_finished: bool = False) -> dict[str, Any]:
    """Poll until the run finishes, printing each task's state changes."""
    path = _run_path(dag_id, run_id)
    started = time.monotonic()
    seen: dict[str, str] = {}
    while True:
        run = api.json("GET", path)
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
    payload = api.json("GET", f"{_run_path(dag_id, run_id)}/taskInstances", params={"limit": 100})
    return payload.get("task_instances", [])


def task_order(api: AirflowApi, dag_id: str) -> list[str]:
    """Task ids in dependency order (the DAG's tasks endpoint lists them alphabetically)."""
    tasks = api.json("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/tasks").get("tasks", [])
    downstream = {t["task_id"]: t.get("downstream_task_ids", []) for t in tasks}
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
    run = api.json("GET", _run_path(dag_id, run_id))
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
        xcom = api.request("GET", f"{_run_path(dag_id, run_id)}/taskInstances/check_changed/"
                                  "xcomEntries/return_value")
        reason = xcom.json().get("value", {}) if xcom.status_code == 200 else {}
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
    path = f"{_run_path(dag_id, run_id)}/taskInstances/{quote(ti['task_id'], safe='')}/logs/{attempt}"
    # A mapped task's instances (train, tune) are told apart by their map index.
    response = api.request("GET", path, params={"full_content": "true",
                                                "map_index": ti.get("map_index", -1)})
    if response.status_code != 200:
        return None
    return response.json().get("content", [])


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
    payload = api.json("GET", f"/api/v2/dags/{quote(dag_id, safe='')}/dagRuns",
                       params={"limit": 5, "order_by": "-run_after"})
    others = [r for r in payload.get("dag_runs", []) if r.get("dag_run_id") != run_id]
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
