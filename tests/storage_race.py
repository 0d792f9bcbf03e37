"""Writers racing for one key with create-only writes: shared by the local-file test
(tests/unit/test_storage_local.py) and the S3 one (tests/integration/test_storage_s3.py)."""

from __future__ import annotations

import threading
from typing import Any


def race_create_only(store: Any, uri: str, writers: int = 8) -> dict[int, str]:
    """Start ``writers`` threads together, each writing ``writer <i>`` to ``uri`` create-only;
    returns ``{i: "won" | "refused"}`` (a writer that failed otherwise is missing)."""
    from include.mlops_core.storage import ObjectExistsError

    barrier = threading.Barrier(writers)
    outcomes: dict[int, str] = {}

    def writer(i: int) -> None:
        barrier.wait()
        try:
            store.write_bytes(uri, f"writer {i}".encode(), create_only=True)
            outcomes[i] = "won"
        except ObjectExistsError:
            outcomes[i] = "refused"

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(writers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes
