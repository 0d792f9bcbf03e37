"""Object storage for ``s3://bucket/key`` and local paths, with atomic writes and clear errors.

boto3 does the S3 work; this module adds what every task needs on top: one URI scheme for S3 and
local files, retries with backoff that say so in the log, write-then-rename for local files
(S3 PUTs are atomic already), create-only writes for append-only logs, and errors that name the
endpoint and the object.

:class:`ObjectStore` hands each URI to one of two backends with the same methods:
:class:`_S3Backend` (boto3) for ``s3://`` URIs, :class:`_LocalBackend` (files) for the rest.
Why not fsspec/s3fs or Airflow's ``ObjectStoragePath``: docs/dependencies.md.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tenacity import (
    RetryError,
    Retrying,
    before_sleep_log,
    retry_if_exception,
    stop_after_attempt,
    wait_exponential,
)

from include.mlops_core.errors import CredentialsError, PipelineError, ServiceUnavailableError

log = logging.getLogger(__name__)


class ObjectExistsError(PipelineError):
    """A create-only write found the object already there."""


class ObjectNotFoundError(PipelineError):
    runbook = "missing-partition.md"


@dataclass(frozen=True)
class ObjectInfo:
    uri: str
    size: int
    etag: str  # S3 ETag, or sha256 of a local file's content

    def as_dict(self) -> dict[str, Any]:
        return {"uri": self.uri, "size": self.size, "etag": self.etag}


def split_s3(uri: str) -> tuple[str, str]:
    rest = uri[len("s3://"):]
    bucket, _, key = rest.partition("/")
    if not bucket:
        raise ValueError(f"{uri!r} has no bucket")
    return bucket, key


def join(base: str, *parts: str) -> str:
    out = base.rstrip("/")
    for part in parts:
        out += "/" + part.strip("/")
    return out


def safe_name(value: str) -> str:
    """``value`` usable in an object key, file name or MLflow metric name."""
    return "".join(ch if ch.isalnum() or ch in "-_." else "_" for ch in value)


def is_s3(uri: str) -> bool:
    return uri.startswith("s3://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def _retryable(exc: BaseException) -> bool:
    from botocore.exceptions import (
        ConnectionClosedError,
        ConnectTimeoutError,
        EndpointConnectionError,
        ReadTimeoutError,
    )

    return isinstance(exc, (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError,
                            ConnectionClosedError))


class _LocalBackend:
    """Files under a local folder (``/path`` or ``file:///path``): write-then-rename for atomic
    writes, a hard link for create-only ones, sha256 of the content as the ETag."""

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        root = local_path(prefix_uri)
        if not root.is_dir():
            return []
        return [ObjectInfo(str(p), p.stat().st_size, _sha256_file(p))
                for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]

    def list_prefixes(self, prefix_uri: str) -> list[str]:
        root = local_path(prefix_uri)
        return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []

    def read(self, uri: str) -> bytes:
        path = local_path(uri)
        if not path.is_file():
            raise ObjectNotFoundError(f"read {uri}: file does not exist")
        return path.read_bytes()

    def exists(self, uri: str) -> bool:
        return local_path(uri).exists()

    def info(self, uri: str) -> ObjectInfo:
        path = local_path(uri)
        return ObjectInfo(str(path), path.stat().st_size, _sha256_file(path))

    def write(self, uri: str, data: bytes) -> ObjectInfo:
        return self._write(uri, data, os.replace)

    def write_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
        if local_path(uri).exists():
            raise ObjectExistsError(f"write {uri}: object already exists")
        # link(2) fails with EEXIST when the name exists, like open(O_CREAT | O_EXCL), but the
        # name appears with the whole content: a reader never sees a partial record.
        return self._write(uri, data, os.link)

    def _write(self, uri: str, data: bytes, publish: Callable[[str, Path], None]) -> ObjectInfo:
        """Write ``data`` to a hidden temporary file beside the target, then ``publish(tmp,
        target)``; the temporary file is gone afterwards, whatever happened."""
        path = local_path(uri)
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
            publish(tmp, path)
        except FileExistsError as err:
            raise ObjectExistsError(f"write {uri}: object already exists") from err
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        return ObjectInfo(str(path), len(data), hashlib.sha256(data).hexdigest())

    def delete(self, uri: str) -> None:
        local_path(uri).unlink(missing_ok=True)

    def ensure_bucket(self, uri: str) -> None:
        """Nothing to do: a local write creates its folders."""


class _S3Backend:
    """Objects in S3 (``s3://bucket/key``) through a boto3 client: retries with backoff when the
    endpoint does not answer, botocore errors turned into :mod:`include.mlops_core.errors` with the
    endpoint and what to check, ``If-None-Match: *`` for create-only writes."""

    def __init__(self, client: Any | None, *, endpoint: str | None, attempts: int,
                 backoff_seconds: float, conn_hint: str) -> None:
        self.client = client
        self.endpoint = endpoint
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.conn_hint = conn_hint

    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        bucket, prefix = _s3_prefix(prefix_uri)
        out = [ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]), obj["ETag"].strip('"'))
               for page in self._pages(prefix_uri, Bucket=bucket, Prefix=prefix)
               for obj in page.get("Contents", []) if not obj["Key"].endswith("/")]
        return sorted(out, key=lambda o: o.uri)

    def list_prefixes(self, prefix_uri: str) -> list[str]:
        bucket, prefix = _s3_prefix(prefix_uri)
        return sorted(p["Prefix"][len(prefix):].rstrip("/")
                      for page in self._pages(prefix_uri, Bucket=bucket, Prefix=prefix,
                                              Delimiter="/")
                      for p in page.get("CommonPrefixes", []))

    def _pages(self, prefix_uri: str, **kwargs: Any) -> Iterator[dict[str, Any]]:
        """The pages of ``list_objects_v2(**kwargs)``, each request retried on its own."""
        token: str | None = None
        while True:
            page = self._call(f"list {prefix_uri}", "list_objects_v2",
                              **kwargs, **({"ContinuationToken": token} if token else {}))
            yield page
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return

    def read(self, uri: str) -> bytes:
        bucket, key = split_s3(uri)
        return self._call(f"read {uri}", "get_object", Bucket=bucket, Key=key)["Body"].read()

    def exists(self, uri: str) -> bool:
        try:
            self.info(uri)
            return True
        except ObjectNotFoundError:
            return False

    def info(self, uri: str) -> ObjectInfo:
        bucket, key = split_s3(uri)
        head = self._call(f"head {uri}", "head_object", Bucket=bucket, Key=key)
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'))

    def write(self, uri: str, data: bytes) -> ObjectInfo:
        return self._put(uri, data)  # a PUT is atomic: readers see the old object or the new

    def write_if_absent(self, uri: str, data: bytes) -> ObjectInfo:
        # The store refuses the PUT (412 PreconditionFailed, see _explain) when the key exists,
        # in one request: two writers racing for a key cannot both win.
        return self._put(uri, data, IfNoneMatch="*")

    def _put(self, uri: str, data: bytes, **extra: Any) -> ObjectInfo:
        bucket, key = split_s3(uri)
        put = self._call(f"write {uri}", "put_object", Bucket=bucket, Key=key, Body=data, **extra)
        return ObjectInfo(uri, len(data), put["ETag"].strip('"'))

    def delete(self, uri: str) -> None:
        bucket, key = split_s3(uri)
        self._call(f"delete {uri}", "delete_object", Bucket=bucket, Key=key)

    def ensure_bucket(self, uri: str) -> None:
        bucket, _ = split_s3(uri)
        try:
            self._call(f"head bucket {bucket}", "head_bucket", Bucket=bucket)
        except Exception:
            self._call(f"create bucket {bucket}", "create_bucket", Bucket=bucket)

    def _call(self, what: str, method: str, /, **kwargs: Any) -> Any:
        if self.client is None:
            raise PipelineError(f"{what}: an s3:// URI needs an S3 connection, none is configured")
        fn = getattr(self.client, method)
        try:
            for attempt in Retrying(
                stop=stop_after_attempt(self.attempts),
                wait=wait_exponential(multiplier=self.backoff_seconds, max=30),
                retry=retry_if_exception(_retryable),
                before_sleep=before_sleep_log(log, logging.WARNING),
                reraise=False,
            ):
                with attempt:
                    return fn(**kwargs)
        except RetryError as err:
            cause = err.last_attempt.exception()
            raise ServiceUnavailableError(
                f"S3 endpoint {self.endpoint} did not answer {what} after {self.attempts} attempts "
                f"with exponential backoff: {cause}. Check that the object store is running and "
                f"that {self.conn_hint or 'the S3 connection'} points at it"
            ) from cause
        except Exception as err:  # botocore ClientError: auth, missing bucket, ...
            from botocore.exceptions import NoCredentialsError

            if isinstance(err, NoCredentialsError):
                raise CredentialsError(f"{what}: no S3 credentials; set login/password on "
                                       f"{self.conn_hint or 'the S3 connection'}") from err
            raise self._explain(what, err) from err

    def _explain(self, what: str, err: Exception) -> Exception:
        code = getattr(err, "response", {}).get("Error", {}).get("Code", "")
        if code in {"NoSuchKey", "404", "NotFound"}:
            return ObjectNotFoundError(f"{what}: object does not exist")
        if code == "NoSuchBucket":
            return PipelineError(f"{what}: bucket does not exist on {self.endpoint}; create it, "
                                 "or fix the URI (the dataset's source_uri or the policy's "
                                 "artifacts_uri)", runbook="bad-data.md")
        if code in {"InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"}:
            return CredentialsError(f"{what}: S3 at {self.endpoint} rejected the credentials "
                                    f"({code}); check {self.conn_hint or 'the S3 connection'}")
        if code in {"PreconditionFailed", "ConditionalRequestConflict"}:
            return ObjectExistsError(f"{what}: object already exists")
        return err


def _s3_prefix(prefix_uri: str) -> tuple[str, str]:
    """``(bucket, key prefix ending in "/")`` of a 'folder' URI; the prefix is "" at the root."""
    bucket, key = split_s3(prefix_uri)
    return bucket, (key.rstrip("/") + "/" if key else "")


class ObjectStore:
    """Read, list and write objects by URI. ``s3_client`` is a boto3 S3 client (None: local only).

    Each URI goes to one of two backends with the same methods: ``s3://`` URIs to the S3 one
    (boto3), everything else to the local one (files); both are built here, once.

    :param s3_client: boto3 client, built by the S3 hook from its Connection
    :param endpoint: shown in error messages (the client's endpoint URL)
    :param attempts: tries per request when the endpoint does not answer
    :param backoff_seconds: first wait between tries; doubles each time
    :param conn_hint: where the S3 settings come from, named in error messages
    """

    def __init__(self, s3_client: Any | None = None, *, endpoint: str | None = None,
                 attempts: int = 4, backoff_seconds: float = 1.0, conn_hint: str = "") -> None:
        self._local = _LocalBackend()
        self._remote = _S3Backend(
            s3_client,
            endpoint=endpoint or getattr(getattr(s3_client, "meta", None), "endpoint_url", None),
            attempts=attempts, backoff_seconds=backoff_seconds, conn_hint=conn_hint)

    @classmethod
    def from_env(cls) -> ObjectStore:
        """Build from ``MLOPS_S3_ENDPOINT_URL`` + standard AWS variables (scripts and containers)."""
        endpoint = os.environ.get("MLOPS_S3_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
        return cls(make_s3_client(endpoint_url=endpoint), endpoint=endpoint,
                   conn_hint="environment variables MLOPS_S3_ENDPOINT_URL / AWS_ACCESS_KEY_ID")

    # The S3 settings, as the hook set them (read-only).
    @property
    def _s3(self) -> Any | None:
        return self._remote.client

    @property
    def endpoint(self) -> str | None:
        return self._remote.endpoint

    @property
    def attempts(self) -> int:
        return self._remote.attempts

    @property
    def backoff_seconds(self) -> float:
        return self._remote.backoff_seconds

    @property
    def conn_hint(self) -> str:
        return self._remote.conn_hint

    def _backend(self, uri: str) -> _LocalBackend | _S3Backend:
        return self._remote if is_s3(uri) else self._local

    # -- reads ----------------------------------------------------------------------------------
    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Objects below ``prefix_uri`` (recursive), sorted by URI; [] when there are none.
        Local files whose name starts with "." (temporary files of a write) are left out."""
        return self._backend(prefix_uri).list(prefix_uri)

    def list_prefixes(self, prefix_uri: str) -> list[str]:
        """Immediate 'sub-folder' names below ``prefix_uri`` (e.g. ``date=2025-01-01``)."""
        return self._backend(prefix_uri).list_prefixes(prefix_uri)

    def read_bytes(self, uri: str) -> bytes:
        """The object's content; :class:`ObjectNotFoundError` when there is none."""
        return self._backend(uri).read(uri)

    def exists(self, uri: str) -> bool:
        return self._backend(uri).exists(uri)

    def info(self, uri: str) -> ObjectInfo:
        return self._backend(uri).info(uri)

    # -- writes ---------------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes, *, create_only: bool = False) -> ObjectInfo:
        """Write ``data`` atomically: readers see the old object or the new one, never a part.

        ``create_only`` refuses to replace an existing object (append-only logs); it raises
        :class:`ObjectExistsError` instead, also when another writer creates it meanwhile.
        """
        backend = self._backend(uri)
        return backend.write_if_absent(uri, data) if create_only else backend.write(uri, data)

    def delete(self, uri: str) -> None:
        """Remove one object; no error when it does not exist."""
        self._backend(uri).delete(uri)

    def ensure_bucket(self, uri: str) -> None:
        """Create the bucket of an ``s3://`` URI unless it exists (a no-op for local paths)."""
        self._backend(uri).ensure_bucket(uri)


def _sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def make_s3_client(*, endpoint_url: str | None, access_key: str | None = None,
                   secret_key: str | None = None, region: str | None = None,
                   connect_timeout: float = 3.0, read_timeout: float = 60.0) -> Any:
    """A boto3 S3 client for S3-compatible stores: path-style addressing, our own retries."""
    import boto3
    from botocore.config import Config

    return boto3.client(
        "s3",
        endpoint_url=endpoint_url,
        aws_access_key_id=access_key,
        aws_secret_access_key=secret_key,
        region_name=region or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1",
        config=Config(s3={"addressing_style": "path"}, connect_timeout=connect_timeout,
                      read_timeout=read_timeout, retries={"max_attempts": 1, "mode": "standard"}),
    )
