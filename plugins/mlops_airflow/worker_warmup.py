"""Imported once by the scheduler's forkserver, last (:mod:`mlops_airflow.worker_preload`), never by a
DAG file or a task: it fills caches that every task would otherwise fill for itself and that
are plain data, safe to share with the forked tasks.

- botocore's service models: the first S3 client of a process loads and parses S3's API
  description (JSON, about 0.15-0.5 s). An S3 client is built here from the default session
  with placeholder keys and closed at once; it never connects (no endpoint is called and
  tests/unit/test_worker_preload.py checks that no socket is open after the preload). The
  tasks' clients (include/mlops_core/storage.py ``make_s3_client``) come from the same default
  session, with their own credentials, and find the model loaded.
- ``gc.freeze()`` at the end: everything imported so far moves to the collector's permanent
  generation, so the garbage collector of a worker or task never walks (and so never writes to,
  breaking the copy-on-write sharing of) those objects' pages. The same thing Airflow's
  LocalExecutor does before it forks workers itself.
"""

from __future__ import annotations

import gc


def warm_botocore() -> None:
    import boto3

    client = boto3.client("s3", region_name="us-east-1", aws_access_key_id="warmup",
                          aws_secret_access_key="warmup")  # placeholders: never sent anywhere
    client.close()


# The forkserver lets only ImportError pass at preload; anything else would stop it and every
# task with it. A warm-up is an optimisation: when it fails, tasks build the model themselves.
try:
    warm_botocore()
except Exception as err:  # noqa: BLE001
    import logging

    logging.getLogger(__name__).warning("botocore warm-up skipped (each task loads S3's "
                                        "service model itself): %s", err)
gc.freeze()
