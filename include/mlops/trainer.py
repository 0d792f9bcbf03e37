"""Container entrypoint of the trainer image: the same :func:`include.mlops.pipeline.train` as the
in-process path, driven by a work directory.

    python -m include.mlops.trainer --work-dir /work

Reads ``<work-dir>/config.json``::

    {"dataset_config": {...DatasetConfig...}, "train_uri": "s3://…", "manifest_uri": "s3://…",
     "mlflow_run_id": "…", "artifacts_uri": "s3://…", "run_key": "2025-01-01T000000"}

Credentials come from the environment (``MLFLOW_TRACKING_URI``, ``MLOPS_S3_ENDPOINT_URL``,
``AWS_ACCESS_KEY_ID``, ``AWS_SECRET_ACCESS_KEY``), never from the file. Always writes
``<work-dir>/result.json`` (``status`` ok or error, the train result, timings, resource use,
and for an error its class and message) and exits with a code that names the failure class:
0 ok, 2 data or config error, 3 CUDA / driver error, 1 anything else (137 is the kernel's OOM kill,
which no process can report itself).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import resource
import sys
import time
import traceback
from pathlib import Path
from typing import Any

log = logging.getLogger("include.mlops.trainer")

EXIT_OK, EXIT_OTHER, EXIT_DATA, EXIT_CUDA = 0, 1, 2, 3
_CUDA_MARKERS = ("cuda", "cudnn", "nvidia", "nvml", "gpu driver", "no cuda-capable device")


def classify(err: BaseException) -> tuple[str, int]:
    """``(error class, exit code)`` of an exception raised while training."""
    from include.mlops.errors import PipelineError

    if isinstance(err, PipelineError | ValueError):
        return "data", EXIT_DATA
    text = f"{type(err).__name__}: {err}".lower()
    if any(marker in text for marker in _CUDA_MARKERS):
        return "cuda", EXIT_CUDA
    if isinstance(err, MemoryError):
        return "oom", EXIT_OTHER
    return "error", EXIT_OTHER


def resources() -> dict[str, float]:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return {"cpu_seconds": round(usage.ru_utime + usage.ru_stime, 3),
            "peak_rss_mb": round(usage.ru_maxrss / 1024, 1)}  # Linux: KiB


def run(work_dir: Path) -> tuple[dict[str, Any], int]:
    """Train from ``work_dir/config.json``; returns the result dict and the exit code."""
    started = time.monotonic()
    result: dict[str, Any] = {"status": "error"}
    try:
        config_path = work_dir / "config.json"
        try:
            job = json.loads(config_path.read_text())
        except (OSError, ValueError) as err:
            from include.mlops.errors import ConfigError

            raise ConfigError(f"cannot read the trainer config {config_path}: {err}") from err
        from mlflow import MlflowClient

        from include.mlops.config import DatasetConfig
        from include.mlops.pipeline import Stage, train
        from include.mlops.storage import ObjectStore

        config = DatasetConfig.model_validate(job["dataset_config"])
        store = ObjectStore.from_env() if job["train_uri"].startswith("s3://") else ObjectStore()
        stage = Stage(config=config, store=store, client=MlflowClient(),
                      mlflow_run_id=job["mlflow_run_id"], artifacts_uri=job["artifacts_uri"],
                      run_key=job["run_key"])
        trained = train(stage, train_uri=job["train_uri"], manifest_uri=job["manifest_uri"])
        result = {"status": "ok", **trained}
        code = EXIT_OK
    except Exception as err:  # noqa: BLE001 - every failure becomes a classified result file
        error_class, code = classify(err)
        result = {"status": "error", "error_class": error_class,
                  "error": f"{type(err).__name__}: {err}"}
        log.error("Training failed (%s): %s", error_class, err)
        traceback.print_exc(file=sys.stderr)
    result["timings"] = {"wall_seconds": round(time.monotonic() - started, 3)}
    result["resources"] = resources()
    result["device"] = os.environ.get("MLOPS_TRAINER_DEVICE", "cpu")
    tmp = work_dir / ".result.json.tmp"
    tmp.write_text(json.dumps(result, indent=2, default=str))
    tmp.replace(work_dir / "result.json")  # atomic: the operator never reads half a file
    return result, code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Train one model from a work directory")
    parser.add_argument("--work-dir", type=Path, default=Path("/work"))
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stdout,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    result, code = run(args.work_dir)
    log.info("Trainer result: %s", json.dumps({k: v for k, v in result.items()
                                                if k in ("status", "error_class", "model_uri")}))
    return code


if __name__ == "__main__":
    sys.exit(main())
