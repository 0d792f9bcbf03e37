"""Parse time of each DAG file, as the dag-processor pays it on every parse.

Each measurement runs in a fresh interpreter: import airflow.sdk, the dag-processor's own parsing
module and, as the dag-processor does before it forks a parse (``[dag_processor]
parsing_pre_import_modules``, on by default), the ``airflow.*`` modules the file imports (not
counted); then time the import of the DAG file.
The cold import (nothing pre-imported but airflow.sdk) is reported beside it.
Target: < 0.05 s per file (per parse).

    python bench/parse_time.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 0.05

PROBE = r"""
import importlib.util, json, sys, time
sys.path[:0] = [{repo!r}, {plugins!r}]
import airflow.sdk  # baseline, not counted
if {preimport!r}:
    import airflow.dag_processing.processor  # the process that parses has this loaded
    import gc
    gc.freeze()  # as the dag-processor's manager does before it forks the parsing processes
    import importlib
    from airflow.utils.file import iter_airflow_imports
    for name in iter_airflow_imports({path!r}):
        importlib.import_module(name)
heavy = {{"pandas", "sklearn", "mlflow", "great_expectations", "evidently"}}
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "heavy": sorted(heavy & set(sys.modules))}}))
"""


def measure(path: Path, repeat: int) -> dict:
    samples, cold, heavy = [], [], set()
    for _ in range(repeat):
        for preimport, into in ((True, samples), (False, cold)):
            code = PROBE.format(repo=str(REPO), plugins=str(REPO / "plugins"), path=str(path),
                                preimport=preimport)
            out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                 check=True).stdout.strip().splitlines()[-1]
            result = json.loads(out)
            into.append(result["seconds"])
            heavy.update(result["heavy"])
    return {"file": str(path.relative_to(REPO)), "median_s": statistics.median(samples),
            "min_s": min(samples), "max_s": max(samples), "cold_s": statistics.median(cold),
            "heavy_imports": sorted(heavy)}


def main() -> list[dict]:
    sys.path.insert(0, str(REPO / "bench"))
    from report import write_section

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=7)
    args = parser.parse_args()
    rows = [measure(path, args.repeat) for path in sorted((REPO / "dags").glob("*.py"))]
    for row in rows:
        verdict = "OK" if row["median_s"] < TARGET_S and not row["heavy_imports"] else "OVER"
        print(f"{row['file']}: median {row['median_s'] * 1000:.1f} ms "
              f"(min {row['min_s'] * 1000:.1f}, max {row['max_s'] * 1000:.1f}; "
              f"{args.repeat} runs; cold {row['cold_s'] * 1000:.1f} ms) heavy imports: "
              f"{row['heavy_imports'] or 'none'} [{verdict}]")
    table = ["| DAG file | per parse, median | min | max | cold import, median | heavy imports "
             "| target < 50 ms per parse |", "|---|---|---|---|---|---|---|"]
    table += [f"| {r['file']} | {r['median_s'] * 1000:.1f} ms | {r['min_s'] * 1000:.1f} ms | "
              f"{r['max_s'] * 1000:.1f} ms | {r['cold_s'] * 1000:.1f} ms | "
              f"{', '.join(r['heavy_imports']) or 'none'} | "
              f"{'met' if r['median_s'] < TARGET_S else 'MISSED'} |" for r in rows]
    write_section("DAG parse time", "Import of each DAG file in a fresh interpreter after "
                  "`import airflow.sdk`, `airflow.dag_processing.processor` (loaded in the "
                  "process that parses) and the `airflow.*` modules the file imports, which the "
                  "dag-processor imports once before it forks each parse "
                  "(`[dag_processor] parsing_pre_import_modules`, default on); not counted. "
                  "The heap is frozen (`gc.freeze()`) after the dag-processor's own imports, as "
                  "its manager does before it forks: without that, a full garbage collection "
                  "that happens to fall into the parse (about 100 ms over the ~200,000 objects "
                  "Airflow leaves) is counted as parse time. "
                  "Cold import: after `import airflow.sdk` only (a worker starting a task pays "
                  f"this once). {args.repeat} runs each, measured {time.strftime('%Y-%m-%d')} on "
                  "the project's 2-core machine.\n\n" + "\n".join(table))
    return rows


if __name__ == "__main__":
    main()
