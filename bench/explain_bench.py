"""Model explanation benchmark: what ``include.mlops_core.explain.explain`` costs next to training.

N rows of the churn demo (``include.mlops_core.demo_data``, one day, cast as ingest does), split as
the training DAG splits them (75 % train, 25 % held out). For each family: train on the training
rows, then explain on the held-out rows with explain()'s default sample sizes (500 rows for
SHAP, 5,000 rows x 5 repeats for permutation importance). Median of ``--repeat`` rounds, all in
this process; ``import shap`` (paid once per worker process) is timed on its own, and the SHAP
time of each family's first round is shown too (the first permutation-explainer call in a
process also compiles shap's numba masking code). Target:
explaining a hist_gradient_boosting model of 100k rows in < 10 s and a small fraction of its
training time.

    python bench/explain_bench.py [--rows 100000] [--repeat 3] [--families ...] [--report]

``--report`` also writes the table to docs/benchmarks.md (section "Model explanations").
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from datetime import date
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO), str(REPO / "bench")]

# None: the shipped config's hyperparameters (150 iterations, early stopping); {}: the defaults
FAMILIES = {"hist_gradient_boosting": None, "logistic_regression": {}, "random_forest": {},
            "xgboost": {}}
DEFAULT_FAMILIES = ["hist_gradient_boosting", "logistic_regression"]
TARGET_S = 10.0


def family_config(family: str):
    from include.mlops_core.config import load_dataset_config

    config = load_dataset_config("churn_demo")
    hyperparameters = FAMILIES[family]
    if hyperparameters is None:
        return config
    training = config.training.model_copy(update={"family": family,
                                                  "hyperparameters": hyperparameters})
    return config.model_copy(update={"training": training})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--families", nargs="+", choices=sorted(FAMILIES), default=DEFAULT_FAMILIES)
    parser.add_argument("--report", action="store_true", help="write docs/benchmarks.md")
    args = parser.parse_args()

    from include.mlops_core import explain, modeling
    from include.mlops_core.demo_data import generate
    from include.mlops_core.ingest import conform

    started = time.perf_counter()
    explain._import_shap()
    import_s = time.perf_counter() - started

    results = []
    for family in args.families:
        config = family_config(family)
        frame = conform(generate(date(2025, 6, 1), args.rows), config, "memory://bench")
        train, test = modeling.split(frame, config)
        rounds = []
        for i in range(args.repeat):
            started = time.perf_counter()
            model = modeling.train(train, config)
            train_s = time.perf_counter() - started
            started = time.perf_counter()
            result = explain.explain(model, test, config)
            total_s = time.perf_counter() - started
            rounds.append({"train": train_s, "shap": result["seconds"]["shap"],
                           "shap_rows": result["rows"]["shap"],
                           "permutation": result["seconds"]["permutation"], "total": total_s})
            print(f"{family} round {i + 1}: train {train_s:.2f}s, shap {result['seconds']['shap']:.2f}s "
                  f"({result['method']}, {result['rows']['shap']} rows), permutation "
                  f"{result['seconds']['permutation']:.2f}s ({result['rows']['permutation']} rows), "
                  f"top: {[r['column'] for r in result['top_features'][:3]]}", flush=True)
        med = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
        med["shap_first"] = rounds[0]["shap"]
        results.append((family, len(train), len(test), med))

    lines = [
        f"Measured {time.strftime('%Y-%m-%d')} on this project's 2-core machine; {args.rows:,} rows "
        f"of the churn demo split 75/25, median of {args.repeat} rounds in one process; explain() "
        "with its default samples (SHAP 500 rows, permutation 5,000 rows x 5 repeats; the "
        "permutation explainer of the non-tree families explains 200 of the 500 against 50 "
        "background rows). "
        f"`import shap` once per process: {import_s:.2f} s (not included below). The families "
        "run in the order listed: the first family's first round pays any one-time cost, such "
        "as numba compiling shap's masking code for the permutation explainer.",
        "",
        "| rows | family | train s | shap s (rows) | shap s, first round | permutation s | "
        "explain total s | explain / train |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for family, n_train, _, med in results:
        lines.append(f"| {args.rows:,} ({n_train:,} train) | {family} | {med['train']:.2f} | "
                     f"{med['shap']:.2f} ({med['shap_rows']:.0f}) | {med['shap_first']:.2f} | "
                     f"{med['permutation']:.2f} | {med['total']:.2f} | "
                     f"{med['total'] / med['train']:.0%} |")
    for family, _, _, med in results:
        if family == "hist_gradient_boosting":
            lines += ["", f"Target: hist_gradient_boosting explained in < {TARGET_S:.0f} s: "
                          f"{'met' if med['total'] < TARGET_S else 'NOT met'} ({med['total']:.2f} s)."]
    if args.report:
        from report import write_section

        write_section("Model explanations", "\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
