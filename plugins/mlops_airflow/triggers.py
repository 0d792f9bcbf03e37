"""Waiting for data in the triggerer: a run whose partitions are not there yet holds no worker
slot while it waits (docs/configuration.md, ``data_wait``).

The trigger lists the missing partition folders every ``poll_seconds`` until each holds a data
file (then the task resumes at once) or the deadline passes (then the task resumes and fails
with the classified missing-partition line). Its arguments are stored in the metadata database,
so they hold no credential: the S3 Connection is fetched by id in the triggerer.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

from airflow.triggers.base import BaseTrigger, TriggerEvent


class PartitionsArrivedTrigger(BaseTrigger):
    """Fires ``{"status": "arrived"}`` once every prefix holds a data file, or
    ``{"status": "timeout", "missing": [...]}`` at ``deadline``.

    :param prefixes: partition folders (``s3://…/date=YYYY-MM-DD`` or local paths)
    :param s3_conn_id: the object store's Connection (local paths need none)
    :param deadline: ISO 8601 time (UTC) after which the wait gives up
    :param poll_seconds: seconds between listings
    """

    def __init__(self, *, prefixes: list[str], s3_conn_id: str, deadline: str,
                 poll_seconds: float = 60) -> None:
        super().__init__()
        self.prefixes = list(prefixes)
        self.s3_conn_id = s3_conn_id
        self.deadline = deadline
        self.poll_seconds = float(poll_seconds)

    def serialize(self) -> tuple[str, dict[str, Any]]:
        return (f"{type(self).__module__}.{type(self).__qualname__}",
                {"prefixes": self.prefixes, "s3_conn_id": self.s3_conn_id,
                 "deadline": self.deadline, "poll_seconds": self.poll_seconds})

    async def run(self) -> AsyncIterator[TriggerEvent]:
        from include.mlops_core.ingest import still_missing
        from include.mlops_core.storage import ObjectStore, is_s3

        if any(is_s3(p) for p in self.prefixes):
            from airflow.sdk import BaseHook

            from mlops_airflow.hooks.object_storage import store_for

            conn = await BaseHook.aget_connection(self.s3_conn_id)
            store = store_for(conn, self.s3_conn_id)
        else:
            store = ObjectStore()
        deadline = datetime.fromisoformat(self.deadline)
        missing = self.prefixes
        while True:
            missing = await asyncio.to_thread(still_missing, store, missing)
            if not missing:
                self.log.info("Data arrived under %s", ", ".join(self.prefixes))
                yield TriggerEvent({"status": "arrived", "deadline": self.deadline})
                return
            left = (deadline - datetime.now(UTC)).total_seconds()
            if left <= 0:
                yield TriggerEvent({"status": "timeout", "missing": missing,
                                    "deadline": self.deadline})
                return
            await asyncio.sleep(min(self.poll_seconds, left))
