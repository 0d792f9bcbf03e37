"""Parse time of each DAG file, minus a bare ``import airflow.sdk``.

Each measurement runs in a fresh interpreter: import airflow.sdk (not counted), then time the
import of the DAG file (what the dag-processor pays on every parse of a changed file).
Target: < 0.05 s per file.

    python bench/parse_time.py [--repeat 7]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
TARGET_S = 0.05

PROBE = r"""
import importlib.util, json, sys, time
sys.path[:0] = [{repo!r}, {plugins!r}]
import airflow.sdk  # baseline, not counted
heavy = {{"pandas", "sklearn", "mlflow", "great_expectations", "evidently"}}
start = time.perf_counter()
spec = importlib.util.spec_from_file_location("dag_under_test", {path!r})
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "heavy": sorted(heavy & set(sys.modules))}}))
"""


def measure(path: Path, repeat: int) -> dict:
    samples, heavy = [], set()
    for _ in range(repeat):
        code = PROBE.format(repo=str(REPO), plugins=str(REPO / "plugins"), path=str(path))
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             check=True).stdout.strip().splitlines()[-1]
        result = json.loads(out)
        samples.append(result["seconds"])
        heavy.update(result["heavy"])
    return {"file": str(path.relative_to(REPO)), "median_s": statistics.median(samples),
            "min_s": min(samples), "max_s": max(samples), "heavy_imports": sorted(heavy)}


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
              f"{args.repeat} runs) heavy imports: {row['heavy_imports'] or 'none'} [{verdict}]")
    table = ["| DAG file | median | min | max | heavy imports | target < 50 ms |", "|---|---|---|---|---|---|"]
    table += [f"| {r['file']} | {r['median_s'] * 1000:.1f} ms | {r['min_s'] * 1000:.1f} ms | "
              f"{r['max_s'] * 1000:.1f} ms | {', '.join(r['heavy_imports']) or 'none'} | "
              f"{'met' if r['median_s'] < TARGET_S else 'MISSED'} |" for r in rows]
    write_section("DAG parse time", "Import of each DAG file in a fresh interpreter after a bare "
                  f"`import airflow.sdk` (not counted); {args.repeat} runs each.\n\n" + "\n".join(table))
    return rows


if __name__ == "__main__":
    main()
