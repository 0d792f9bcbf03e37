"""Ingest: read the partitions for a data interval, check each file against the declared schema,
and record a manifest (object keys, sizes, ETags or content hashes, row count, schema).

Every problem is raised as a :class:`DataError` subclass whose message names the file, the
column and the problem, so the last line of the task log says what to fix.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import TYPE_CHECKING, Any

from include.mlops_core.config import Column, DatasetConfig
from include.mlops_core.errors import CorruptFileError, DataError, MissingPartitionError, SchemaError
from include.mlops_core.storage import ObjectInfo, ObjectStore, is_s3, join, local_path

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

SOURCE_COLUMN = "_source_file"  # which file each row came from; dropped before training
DATA_SUFFIXES = (".csv", ".csv.gz", ".parquet", ".pq")
READ_CONCURRENCY = 8  # files downloaded at once by ingest()


@dataclass(frozen=True)
class IngestResult:
    frame: pd.DataFrame
    manifest: dict[str, Any]


def partition_dates(interval_start: datetime, interval_end: datetime, lookback_days: int = 1,
                    partition_date: date | None = None) -> list[date]:
    """Days whose partitions a run reads.

    The days in ``[interval_start, interval_end)``, extended backwards to ``lookback_days`` in all.
    A zero-length interval (manual runs of trigger timetables) means the day of ``interval_start``.
    ``partition_date`` (a Param) replaces the interval for hand-run backfills.
    """
    if partition_date is not None:
        last = first = partition_date
    else:
        first = interval_start.date()
        last = (interval_end - timedelta(microseconds=1)).date() if interval_end > interval_start \
            else first
    first = min(first, last - timedelta(days=lookback_days - 1))
    return [first + timedelta(days=i) for i in range((last - first).days + 1)]


def fingerprint(files: list[dict[str, Any]]) -> str:
    """Content fingerprint of a set of files: sha256 over (name, size, ETag/hash), order-free."""
    rows = sorted((f["key"], f["size"], f["etag"]) for f in files)
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


@dataclass(frozen=True)
class Listing:
    """The data files of a run's partitions, found by listing (no file is read yet)."""

    files: list[dict[str, Any]]  # uri, size, etag, key (relative to the source), partition

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.files)


def discover(config: DatasetConfig, store: ObjectStore, dates: list[date]) -> Listing:
    """List the data files of the partitions for ``dates``; a partition without any is an error."""
    # Keys relative to the source root, so the same data has the same fingerprint wherever it is.
    root = (config.source_uri if is_s3(config.source_uri)
            else str(local_path(config.source_uri))).rstrip("/")
    files: list[dict[str, Any]] = []
    missing: list[str] = []
    for day in dates:
        partition = config.partition_template.format(date=day.isoformat())
        prefix = join(config.source_uri, partition)
        found = [o for o in store.list(prefix) if _is_data_file(o.uri)]
        if not found:
            missing.append(prefix)
        files += [{**o.as_dict(), "key": o.uri.removeprefix(root).lstrip("/"),
                   "partition": partition} for o in found]
    if missing:
        available = store.list_prefixes(config.source_uri)
        nearby = ", ".join(available[-5:]) or "none"
        raise MissingPartitionError(
            f"missing partition: no data files under {', '.join(missing)} "
            f"(dataset {config.name!r}). Latest partitions present under {config.source_uri}: "
            f"{nearby}. Wait for the upstream export or run with another date",
            missing=missing,
        )
    return Listing(files)


def still_missing(store: ObjectStore, prefixes: list[str]) -> list[str]:
    """Those of ``prefixes`` (partition folders) that hold no data file yet."""
    return [prefix for prefix in prefixes
            if not any(_is_data_file(o.uri) for o in store.list(prefix))]


def ingest(config: DatasetConfig, store: ObjectStore, dates: list[date],
           listing: Listing | None = None) -> IngestResult:
    """Read and schema-check every data file of the partitions for ``dates``."""
    import pandas as pd

    listing = listing or discover(config, store, dates)
    frames, files = [], []
    # Downloads overlap (a lookback of N days is N files or more); parsing stays in file order,
    # and the first file that cannot be read, in that order, is the error reported.
    with ThreadPoolExecutor(max_workers=max(1, min(READ_CONCURRENCY, len(listing.files)))) as pool:
        payloads = pool.map(store.read_bytes, [entry["uri"] for entry in listing.files])
        downloaded = list(zip(listing.files, payloads, strict=True))
    for entry, payload in downloaded:
        obj = ObjectInfo(entry["uri"], entry["size"], entry["etag"])
        frame = read_file(obj.uri, payload, config)
        frame = conform(frame, config, obj.uri)
        frame[SOURCE_COLUMN] = obj.uri
        frames.append(frame)
        files.append({**entry, "rows": len(frame)})
        log.info("Read %s: %d rows, %d bytes", obj.uri, len(frame), obj.size)

    frame = pd.concat(frames, ignore_index=True)
    if len(frame) == 0:
        raise DataError(f"empty partition: {', '.join(f['uri'] for f in files)} hold no rows "
                        f"(dataset {config.name!r}); the upstream export wrote empty files",
                        runbook="missing-partition.md")
    frame[SOURCE_COLUMN] = frame[SOURCE_COLUMN].astype("category")
    manifest = {
        "dataset": config.name,
        "source_uri": config.source_uri,
        "partitions": sorted({f["partition"] for f in files}),
        "files": files,
        "row_count": int(len(frame)),
        "schema": {c.name: str(frame[c.name].dtype) for c in config.columns},
        "fingerprint": listing.fingerprint,
    }
    return IngestResult(frame, manifest)


def _is_data_file(uri: str) -> bool:
    name = uri.rsplit("/", 1)[-1]
    return not name.startswith(("_", ".")) and name.lower().endswith(DATA_SUFFIXES)


def read_file(uri: str, payload: bytes, config: DatasetConfig) -> pd.DataFrame:
    """Parse one CSV or Parquet file; a file that cannot be parsed raises CorruptFileError."""
    import pandas as pd
    import pyarrow as pa

    fmt = config.format
    if fmt == "auto":
        fmt = "parquet" if uri.lower().endswith((".parquet", ".pq")) else "csv"
    if not payload:
        return pd.DataFrame({c.name: pd.Series(dtype="object") for c in config.columns})
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(io.BytesIO(payload)).to_pandas()
        compression = "gzip" if uri.lower().endswith(".gz") else None
        return pd.read_csv(io.BytesIO(payload), compression=compression, low_memory=False,
                           dtype={c.name: "string" for c in config.columns
                                  if c.type == "categorical"})
    except (pa.ArrowException, OSError, ValueError, UnicodeDecodeError, EOFError,
            pd.errors.ParserError) as err:
        # pandas' EmptyDataError and ParserError are ValueErrors; pyarrow raises ArrowInvalid.
        raise CorruptFileError(
            f"corrupt file {uri}: cannot be read as {fmt} ({type(err).__name__}: "
            f"{str(err).splitlines()[0][:200]}). Re-export the file; nothing was ingested"
        ) from err


def conform(frame: pd.DataFrame, config: DatasetConfig, uri: str) -> pd.DataFrame:
    """Check one file against the declared columns and cast to the declared types."""
    import pandas as pd

    declared = [c.name for c in config.columns]
    missing = [n for n in declared if n not in frame.columns]
    extra = [n for n in frame.columns if n not in declared and n != SOURCE_COLUMN]
    if missing:
        hint = f"; the file has undeclared column(s) {extra} (renamed?)" if extra else ""
        raise SchemaError(
            f"schema mismatch in {uri}: missing column(s) {missing}{hint}. Declared columns: "
            f"{declared} (dataset config {config.name!r}). Fix the export or the dataset config"
        )
    if extra:
        log.warning("%s has undeclared column(s) %s; they are ignored", uri, extra)
    out = {}
    for column in config.columns:
        out[column.name] = _cast(frame[column.name], column, uri)
    return pd.DataFrame(out)


def _cast(values: pd.Series, column: Column, uri: str) -> pd.Series:
    import pandas as pd

    present = values.notna()
    if column.type in ("numeric", "integer"):
        if pd.api.types.is_bool_dtype(values):
            converted = values.astype("float64")
        else:
            converted = pd.to_numeric(values, errors="coerce")
        bad = present & converted.isna()
        if bad.any():
            examples = values[bad].astype(str).unique()[:3].tolist()
            raise SchemaError(
                f"type mismatch in {uri}: column {column.name!r} is declared {column.type} but "
                f"{int(bad.sum())} of {len(values)} rows are not numbers (e.g. {examples})"
            )
        if column.type == "integer":
            fractional = present & (converted.round() != converted)
            if fractional.any():
                examples = values[fractional].astype(str).unique()[:3].tolist()
                raise SchemaError(
                    f"type mismatch in {uri}: column {column.name!r} is declared integer but "
                    f"{int(fractional.sum())} rows have fractions (e.g. {examples})"
                )
        return converted.astype("float64")
    if column.type == "categorical":
        return values.astype("string").astype("object").where(present, None)
    if column.type == "boolean":
        if pd.api.types.is_bool_dtype(values):
            return values.astype("float64")
        mapping = {"true": 1.0, "false": 0.0, "1": 1.0, "0": 0.0, "yes": 1.0, "no": 0.0}
        converted = values.astype("string").str.strip().str.lower().map(mapping)
        bad = present & converted.isna()
        if bad.any():
            examples = values[bad].astype(str).unique()[:3].tolist()
            raise SchemaError(f"type mismatch in {uri}: column {column.name!r} is declared boolean "
                              f"but {int(bad.sum())} rows are not true/false (e.g. {examples})")
        return converted.astype("float64")
    converted = pd.to_datetime(values, errors="coerce", utc=True)
    bad = present & converted.isna()
    if bad.any():
        examples = values[bad].astype(str).unique()[:3].tolist()
        raise SchemaError(f"type mismatch in {uri}: column {column.name!r} is declared datetime "
                          f"but {int(bad.sum())} rows are not dates (e.g. {examples})")
    return converted


def to_parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def read_parquet_bytes(payload: bytes) -> pd.DataFrame:
    import pandas as pd

    return pd.read_parquet(io.BytesIO(payload))
