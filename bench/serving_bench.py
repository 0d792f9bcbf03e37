"""Online serving: our server (include/mlops_core/serving.py) against ``mlflow models serve`` on the
same model, written to docs/benchmarks.md (section "Model serving").

One run starts SeaweedFS and MLflow secured as ``./deploy.sh local`` runs them
(bench/services.py), trains the churn demo's model as shipped (HistGradientBoosting, 150
iterations, 2,000 demo rows), registers it and makes it ``@champion``. Then, side by side, each
with the same number of worker processes (``--workers``, default 1) and the read-only
``viewer`` login:

* ``ours``: ``python -m include.mlops_core.serving serve --model <name>`` (defaults: 1 BLAS/OpenMP
  thread per process, queued requests scored together);
* ``ours, no batching``: the same with ``--max-batch-rows 0`` (every request alone);
* ``mlflow``: ``mlflow models serve -m models:/<name>@champion --env-manager local`` with
  ``OMP_NUM_THREADS=1`` (the same thread setting as ours: the fair comparison);
* ``mlflow, as shipped``: the same without ``OMP_NUM_THREADS`` (scikit-learn's OpenMP pool
  then has one thread per core).

The load: C concurrent keep-alive HTTP/1.1 connections (C = 1, 8, 32), each sending the same
request back to back, from one asyncio process (uvloop) on the same machine. Requests: 1 row
and 1,000 rows of demo data, the identical body ``{"dataframe_records": [...]}`` to both servers
(ours takes MLflow's shapes too). Both must give the same predictions, checked first. Each point
gets ``--seconds`` per server, split into ``--rounds`` rounds in which the servers take turns
(each round after a 0.3 s warm-up): on a shared machine a burst of other load then falls on
every server alike. Besides req/s and latency, the CPU time of each server's processes per
answered request (from /proc): what other load moves least. Goal: ours at least 2x mlflow's
requests/s with a p99 no higher, at each point.

    python bench/serving_bench.py [--seconds 3] [--rounds 3] [--workers 1] [--clients 1 8 32]
                                  [--rows 1 1000] [--variants ...] [--no-write]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench"), str(REPO / "scripts")]

MODEL = "bench_serving"
GOAL_RATIO = 2.0
WARM_UP = 0.3  # s per round, not measured
VARIANTS = ("ours", "ours, no batching", "mlflow", "mlflow, as shipped")


@dataclass
class Point:
    rps: float
    p50: float
    p99: float
    errors: int
    requests: int
    cpu_ms: float  # the server's CPU time (all its processes) per request


@dataclass
class Round:
    latencies: list[float]
    errors: int
    seconds: float
    cpu: float  # CPU seconds of the server during the measured window


@dataclass
class Target:
    name: str
    url: str
    path: str
    proc: subprocess.Popen
    log: Path
    results: dict[tuple[int, int], Point] = field(default_factory=dict)
    rss: float = 0.0  # MB, after the run


# -- load generator ---------------------------------------------------------------------------------
async def _client(host: str, port: int, request: bytes, warm_until: float, stop_at: float,
                  latencies: list[float], errors: list[int]) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while True:
            began = time.perf_counter()
            if began >= stop_at:
                return
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head[9:12])
            lower = head.lower()
            at = lower.index(b"content-length:") + 15
            length = int(lower[at:lower.index(b"\r\n", at)])
            await reader.readexactly(length)
            if began >= warm_until:
                latencies.append(time.perf_counter() - began)
                if status != 200:
                    errors.append(status)
    finally:
        writer.close()


async def _load(url: str, path: str, body: bytes, clients: int, seconds: float,
                pid: int) -> Round:
    host, port = url.removeprefix("http://").split(":")
    request = (f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
               f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n"
               ).encode() + body
    latencies: list[float] = []
    errors: list[int] = []
    start = time.perf_counter()
    warm_until, stop_at = start + WARM_UP, start + WARM_UP + seconds

    async def cpu_at_warm_end() -> float:
        await asyncio.sleep(WARM_UP)
        return cpu_seconds(pid)

    cpu_task = asyncio.ensure_future(cpu_at_warm_end())
    await asyncio.gather(*(_client(host, int(port), request, warm_until, stop_at, latencies,
                                   errors) for _ in range(clients)))
    cpu = cpu_seconds(pid) - await cpu_task
    return Round(latencies, len(errors), max(time.perf_counter(), stop_at) - warm_until, cpu)


def measure(target: Target, body: bytes, clients: int, seconds: float) -> Round:
    try:
        import uvloop

        run = uvloop.run
    except ImportError:  # pragma: no cover
        run = asyncio.run
    return run(_load(target.url, target.path, body, clients, seconds, target.proc.pid))


def combine(rounds: list[Round]) -> Point:
    """One point from its rounds: requests over measured time, latencies pooled."""
    ordered = sorted(x for r in rounds for x in r.latencies) or [float("nan")]
    requests = sum(len(r.latencies) for r in rounds)
    return Point(rps=requests / sum(r.seconds for r in rounds),
                 p50=statistics.median(ordered) * 1000,
                 p99=ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000,
                 errors=sum(r.errors for r in rounds), requests=requests,
                 cpu_ms=sum(r.cpu for r in rounds) * 1000 / max(1, requests))


def cpu_seconds(pgid: int) -> float:
    """User + system CPU time of the processes in group ``pgid`` (the server and its workers)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[2] == str(pgid):
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


# -- servers ------------------------------------------------------------------------------------
def _post(url: str, body: bytes) -> dict[str, Any]:
    request = urllib.request.Request(url, data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:  # noqa: S310
        return json.loads(response.read())


def _wait(target: Target, probe: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if target.proc.poll() is not None:
            raise SystemExit(f"{target.name} exited:\n{target.log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(target.url + probe, timeout=2) as response:  # noqa: S310
                if response.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.3)
    raise SystemExit(f"{target.name} not ready after {timeout:.0f}s:\n"
                     f"{target.log.read_text()[-3000:]}")


def start_servers(services: Any, work: Path, workers: int,
                  variants: list[str]) -> list[Target]:
    from stack import BIN, MLFLOW_VIEWER, free_port

    base = {key: value for key, value in os.environ.items()
            if not key.startswith(("MLFLOW_", "AWS_", "AIRFLOW_CONN_", "OMP_", "OPENBLAS_",
                                   "MKL_"))}
    base.update(MLFLOW_TRACKING_URI=services.mlflow_url, MLFLOW_TRACKING_USERNAME=MLFLOW_VIEWER,
                MLFLOW_TRACKING_PASSWORD=services.secrets["MLOPS_MLFLOW_VIEWER_PASSWORD"],
                MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR="false", PYTHONPATH=str(REPO),
                PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")  # mlflow runs `uvicorn`
    ours = [sys.executable, "-m", "include.mlops_core.serving", "serve", "--model", MODEL,
            "--tracking-uri", services.mlflow_url, "--workers", str(workers)]
    mlflow = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
              "--env-manager", "local", "-h", "127.0.0.1", "--workers", str(workers)]
    plans = {"ours": (ours, {}, "/predict", "/health"),
             "ours, no batching": (ours + ["--max-batch-rows", "0"], {}, "/predict", "/health"),
             "mlflow": (mlflow, {"OMP_NUM_THREADS": "1"}, "/invocations", "/ping"),
             "mlflow, as shipped": (mlflow, {}, "/invocations", "/ping")}
    plans = {name: plan for name, plan in plans.items() if name in variants}
    targets: list[Target] = []
    try:  # whatever fails, nothing started is left running
        for name, (cmd, extra, path, _) in plans.items():
            port = free_port()
            option = ["--port", str(port)] if cmd[0] == sys.executable else ["-p", str(port)]
            log = work / f"serve-{name.replace(', ', '-').replace(' ', '-')}.log"
            proc = subprocess.Popen([*cmd, *option], env={**base, **extra}, cwd=work,
                                    stdout=log.open("wb"), stderr=subprocess.STDOUT,
                                    start_new_session=True)
            targets.append(Target(name, f"http://127.0.0.1:{port}", path, proc, log))
            print(f"started {name}: pid {proc.pid} on {port}", flush=True)
        for target, (_, _, _, probe) in zip(targets, plans.values(), strict=True):
            _wait(target, probe)
    except BaseException:  # SystemExit from _wait included
        stop(targets)
        raise
    return targets


def rss_mb(pid: int) -> float:
    """Resident memory of the process group led by ``pid`` (uvicorn's workers included)."""
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            if stat.read_text().rsplit(")", 1)[1].split()[2] != str(pid):
                continue
            status = (stat.parent / "status").read_text()
        except (OSError, IndexError):
            continue
        for line in status.splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1])
    return total / 1024


def stop(targets: list[Target]) -> None:
    from stack import stop_group

    for target in targets:
        stop_group(target.proc.pid, timeout=10)


# -- the model ----------------------------------------------------------------------------------
def register_model(services: Any) -> list[dict[str, Any]]:
    """The demo model as shipped, @champion; returns 1,000 demo rows as JSON objects."""
    from datetime import date

    import yaml
    from stack import MLFLOW_WORKER, MlflowLogin

    from include.mlops_core import modeling, tracking
    from include.mlops_core.config import DATASETS_DIR, DatasetConfig
    from include.mlops_core.demo_data import generate
    from include.mlops_core.ingest import conform

    raw = yaml.safe_load((DATASETS_DIR / "churn_demo.yaml").read_text())
    config = DatasetConfig.model_validate({**raw, "name": "churn_demo"})
    day = date(2025, 1, 1)
    frame = conform(generate(day, 2000), config, f"memory://{day}")
    features = [c.name for c in config.feature_columns]
    os.environ["MLFLOW_TRACKING_URI"] = services.mlflow_url  # log_model's fluent client
    with MlflowLogin(MLFLOW_WORKER, services.secrets["MLOPS_MLFLOW_WORKER_PASSWORD"]):
        from mlflow import MlflowClient

        client = MlflowClient(services.mlflow_url, services.mlflow_url)
        experiment_id = tracking.ensure_experiment(client, MODEL)
        run_id = client.create_run(experiment_id).info.run_id
        client.log_param(run_id, "family", config.training.family)
        model = modeling.train(frame, config)
        info = tracking.log_sklearn_model(run_id=run_id, model=model, name="model",
                                          input_example=frame[features].head(5),
                                          trusted_types=modeling.untrusted_types(model))
        version = tracking.register(client, model_name=MODEL, model_uri=info.model_uri,
                                    run_id=run_id, tags={}, description="serving bench")
        client.set_registered_model_alias(MODEL, "champion", version)
        client.set_terminated(run_id)
    scoring = conform(generate(date(2025, 1, 2), 1000), config, "memory://scoring")
    return json.loads(scoring[features].to_json(orient="records"))


# -- report -------------------------------------------------------------------------------------
def _machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}"


def _cell(point: Point | None, cpu: bool = False) -> str:
    if point is None:
        return "– | – | –" + (" | –" if cpu else "")
    errors = f" ({point.errors} errors)" if point.errors else ""
    return f"{point.rps:,.0f}{errors} | {point.p50:.1f} | {point.p99:.1f}" + \
        (f" | {point.cpu_ms:.2f}" if cpu else "")


def report(targets: dict[str, Target], rows: list[int], clients: list[int], seconds: float,
           workers: int, load: tuple[str, str], rounds_n: int) -> str:
    ours, mlflow = targets["ours"], targets["mlflow"]
    met_all = True
    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on {_machine()}; load average "
        f"{load[0]} before, {load[1]} after (other work shares this machine). Command: "
        f"`python bench/serving_bench.py --seconds {seconds:g} --rounds {rounds_n} --workers "
        f"{workers}`. Both servers serve "
        f"`models:/{MODEL}@champion` (the churn demo's model as shipped: HistGradientBoosting, "
        "150 iterations, 2,000 training rows) from the same MLflow server, each with "
        f"**{workers} worker process{'es' if workers > 1 else ''}**; the client runs on the "
        "same machine (one asyncio process, keep-alive connections). Each point: "
        f"{seconds:g} s, in {rounds_n} rounds in which the servers take turns (each round "
        f"after a {WARM_UP:g} s warm-up), so a burst of load from elsewhere falls on all of "
        "them. `CPU ms/req` is the CPU time the server's processes used per answered request "
        "(from /proc), which other load on the machine moves much less than req/s; `CPU "
        "ratio` is mlflow's over ours. The same body "
        '`{"dataframe_records": [...]}` goes to both, and both gave the same predictions. '
        "`mlflow` is `mlflow models serve -m models:/<name>@champion --env-manager local` with "
        "`OMP_NUM_THREADS=1`, the thread setting ours uses (see the second table for MLflow "
        "without it). Goal: ours at least 2x mlflow's requests/s at an equal or lower p99.",
        "",
        "| request | clients | ours: req/s | p50 ms | p99 ms | CPU ms/req | mlflow: req/s "
        "| p50 ms | p99 ms | CPU ms/req | req/s ratio | CPU ratio | 2x at ≤ p99 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for n in rows:
        for c in clients:
            a, b = ours.results.get((n, c)), mlflow.results.get((n, c))
            ratio = a.rps / b.rps if a and b and b.rps else float("nan")
            cpu = b.cpu_ms / a.cpu_ms if a and b and a.cpu_ms else float("nan")
            met = bool(a and b and ratio >= GOAL_RATIO and a.p99 <= b.p99 and not a.errors)
            met_all &= met
            lines.append(f"| {n:,} row{'s' if n > 1 else ''} | {c} | {_cell(a, True)} | "
                         f"{_cell(b, True)} | {ratio:.1f}x | {cpu:.1f}x | "
                         f"{'met' if met else 'missed'} |")
    others = [name for name in ("ours, no batching", "mlflow, as shipped") if name in targets]
    shipped = targets.get("mlflow, as shipped")
    met_shipped = shipped is not None
    if others:
        lines += ["", "For context, the same points: ours scoring every request alone "
                  "(`--max-batch-rows 0`), and MLflow without `OMP_NUM_THREADS` (as shipped; "
                  "scikit-learn's OpenMP pool has one thread per core), with ours against it.",
                  "",
                  "| request | clients | " + " | ".join(
                      f"{name}: req/s | p50 ms | p99 ms | CPU ms/req" for name in others)
                  + (" | ours vs as shipped: req/s | CPU | 2x at ≤ p99 |" if shipped else " |"),
                  "|---|---|" + "---|---|---|---|" * len(others)
                  + ("---|---|---|" if shipped else "")]
        for n in rows:
            for c in clients:
                row = f"| {n:,} row{'s' if n > 1 else ''} | {c} | " + " | ".join(
                    _cell(targets[name].results.get((n, c)), True) for name in others) + " |"
                if shipped:
                    a, b = ours.results.get((n, c)), shipped.results.get((n, c))
                    ratio = a.rps / b.rps if a and b and b.rps else float("nan")
                    cpu = b.cpu_ms / a.cpu_ms if a and b and a.cpu_ms else float("nan")
                    met = bool(a and b and ratio >= GOAL_RATIO and a.p99 <= b.p99)
                    met_shipped &= met
                    row += f" {ratio:.1f}x | {cpu:.1f}x | {'met' if met else 'missed'} |"
                lines.append(row)
    lines += ["", f"Goal against mlflow with the same thread setting: "
              f"{'met at every point' if met_all else 'not met at every point'}"
              + (f"; against mlflow as shipped: "
                 f"{'met at every point' if met_shipped else 'not met at every point'}"
                 if shipped else "")
              + " (each row says which). Memory after the run (RSS of the server's processes): "
              + ", ".join(f"{t.name} {t.rss:,.0f} MB" for t in targets.values()) + "."]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=3.0,
                        help="measured seconds per point and server (3)")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds each point is split into, the servers taking turns (3)")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 1000])
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=VARIANTS,
                        metavar="NAME", help=f"which servers ({', '.join(VARIANTS)})")
    parser.add_argument("--no-write", action="store_true", help="print, do not write the doc")
    args = parser.parse_args()
    if "ours" not in args.variants or "mlflow" not in args.variants:
        parser.error("--variants needs at least 'ours' and 'mlflow'")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    from report import write_section
    from services import bench_services

    load_before = f"{os.getloadavg()[0]:.2f}"
    with bench_services("mlops-serving-bench-") as services:
        records = register_model(services)
        print(f"registered {MODEL} v1 @champion; starting the servers", flush=True)
        targets = start_servers(services, services.work, args.workers, args.variants)
        chosen = {t.name: t for t in targets}
        try:
            bodies = {n: json.dumps({"dataframe_records": records[:n]}).encode()
                      for n in args.rows}
            for n, body in bodies.items():
                answers = {t.name: _post(t.url + t.path, body)["predictions"]
                           for t in chosen.values()}
                first = answers["ours"]
                assert all(a == first for a in answers.values()), \
                    f"the servers disagree on {n} rows"
            for n, body in bodies.items():
                for c in args.clients:
                    rounds: dict[str, list[Round]] = {name: [] for name in chosen}
                    for _ in range(args.rounds):  # the servers alternate within each round
                        for target in chosen.values():
                            rounds[target.name].append(
                                measure(target, body, c, args.seconds / args.rounds))
                    for target in chosen.values():
                        point = target.results[(n, c)] = combine(rounds[target.name])
                        print(f"{n:>5} rows x {c:>2} clients  {target.name:<20} "
                              f"{point.rps:8.1f} req/s  p50 {point.p50:7.1f} ms  "
                              f"p99 {point.p99:7.1f} ms  CPU {point.cpu_ms:6.2f} ms/req  "
                              f"errors {point.errors}", flush=True)
            for target in chosen.values():
                target.rss = rss_mb(target.proc.pid)
        finally:
            stop(targets)
    text = report(chosen, args.rows, args.clients, args.seconds, args.workers,
                  (load_before, f"{os.getloadavg()[0]:.2f}"), args.rounds)
    print(text)
    if not args.no_write:
        write_section("Model serving", text)


if __name__ == "__main__":
    main()
