"""Object storage for ``s3://bucket/key`` and local paths, with atomic writes and clear errors.

boto3 does the S3 work; this module adds what every task needs on top: one URI scheme for S3 and
local files, retries with backoff that say so in the log, write-then-rename for local files
(S3 PUTs are atomic already), create-only writes for append-only logs, and errors that name the
endpoint and the object.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
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

from include.mlops.errors import CredentialsError, PipelineError, ServiceUnavailableError

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


class ObjectStore:
    """Read, list and write objects by URI. ``s3_client`` is a boto3 S3 client (None: local only).

    :param s3_client: boto3 client, built by the S3 hook from its Connection
    :param endpoint: shown in error messages (the client's endpoint URL)
    :param attempts: tries per request when the endpoint does not answer
    :param backoff_seconds: first wait between tries; doubles each time
    """

    def __init__(self, s3_client: Any | None = None, *, endpoint: str | None = None,
                 attempts: int = 4, backoff_seconds: float = 1.0, conn_hint: str = "") -> None:
        self._s3 = s3_client
        self.endpoint = endpoint or (getattr(getattr(s3_client, "meta", None), "endpoint_url", None))
        self.attempts = attempts
        self.backoff_seconds = backoff_seconds
        self.conn_hint = conn_hint

    @classmethod
    def from_env(cls) -> ObjectStore:
        """Build from ``MLOPS_S3_ENDPOINT_URL`` + standard AWS variables (scripts and containers)."""
        endpoint = os.environ.get("MLOPS_S3_ENDPOINT_URL") or os.environ.get("MLFLOW_S3_ENDPOINT_URL")
        return cls(make_s3_client(endpoint_url=endpoint), endpoint=endpoint,
                   conn_hint="environment variables MLOPS_S3_ENDPOINT_URL / AWS_ACCESS_KEY_ID")

    # -- plumbing -------------------------------------------------------------------------------
    def _call(self, what: str, method: str, /, **kwargs: Any) -> Any:
        if self._s3 is None:
            raise PipelineError(f"{what}: an s3:// URI needs an S3 connection, none is configured")
        fn = getattr(self._s3, method)
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

    # -- reads ----------------------------------------------------------------------------------
    def list(self, prefix_uri: str) -> list[ObjectInfo]:
        """Objects below ``prefix_uri`` (recursive), sorted by URI; [] when there are none."""
        if not is_s3(prefix_uri):
            root = local_path(prefix_uri)
            if not root.is_dir():
                return []
            return [ObjectInfo(str(p), p.stat().st_size, _sha256_file(p))
                    for p in sorted(root.rglob("*")) if p.is_file() and not p.name.startswith(".")]
        bucket, key = split_s3(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        out: list[ObjectInfo] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"list {prefix_uri}", "list_objects_v2", **kwargs)
            for obj in page.get("Contents", []):
                if obj["Key"].endswith("/"):
                    continue
                out.append(ObjectInfo(f"s3://{bucket}/{obj['Key']}", int(obj["Size"]),
                                      obj["ETag"].strip('"')))
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return sorted(out, key=lambda o: o.uri)

    def list_prefixes(self, prefix_uri: str) -> list[str]:
        """Immediate 'sub-folder' names below ``prefix_uri`` (e.g. ``date=2025-01-01``)."""
        if not is_s3(prefix_uri):
            root = local_path(prefix_uri)
            return sorted(p.name for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
        bucket, key = split_s3(prefix_uri)
        prefix = key.rstrip("/") + "/" if key else ""
        names: list[str] = []
        token: str | None = None
        while True:
            kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "Delimiter": "/"}
            if token:
                kwargs["ContinuationToken"] = token
            page = self._call(f"list {prefix_uri}", "list_objects_v2", **kwargs)
            names += [p["Prefix"][len(prefix):].rstrip("/") for p in page.get("CommonPrefixes", [])]
            token = page.get("NextContinuationToken")
            if not page.get("IsTruncated"):
                return sorted(names)

    def read_bytes(self, uri: str) -> bytes:
        if not is_s3(uri):
            path = local_path(uri)
            if not path.is_file():
                raise ObjectNotFoundError(f"read {uri}: file does not exist")
            return path.read_bytes()
        bucket, key = split_s3(uri)
        body = self._call(f"read {uri}", "get_object", Bucket=bucket, Key=key)["Body"]
        return body.read()

    def exists(self, uri: str) -> bool:
        if not is_s3(uri):
            return local_path(uri).exists()
        bucket, key = split_s3(uri)
        try:
            self._call(f"head {uri}", "head_object", Bucket=bucket, Key=key)
            return True
        except ObjectNotFoundError:
            return False

    def info(self, uri: str) -> ObjectInfo:
        if not is_s3(uri):
            path = local_path(uri)
            return ObjectInfo(str(path), path.stat().st_size, _sha256_file(path))
        bucket, key = split_s3(uri)
        head = self._call(f"head {uri}", "head_object", Bucket=bucket, Key=key)
        return ObjectInfo(uri, int(head["ContentLength"]), head["ETag"].strip('"'))

    # -- writes ---------------------------------------------------------------------------------
    def write_bytes(self, uri: str, data: bytes, *, create_only: bool = False) -> ObjectInfo:
        """Write ``data`` atomically: readers see the old object or the new one, never a part.

        ``create_only`` refuses to replace an existing object (append-only logs); it raises
        :class:`ObjectExistsError` instead.
        """
        if not is_s3(uri):
            path = local_path(uri)
            path.parent.mkdir(parents=True, exist_ok=True)
            if create_only and path.exists():
                raise ObjectExistsError(f"write {uri}: object already exists")
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                if create_only:
                    os.link(tmp, path)  # fails if path appeared meanwhile
                else:
                    os.replace(tmp, path)
            except FileExistsError as err:
                raise ObjectExistsError(f"write {uri}: object already exists") from err
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
            return ObjectInfo(str(path), len(data), hashlib.sha256(data).hexdigest())
        bucket, key = split_s3(uri)
        extra = {"IfNoneMatch": "*"} if create_only else {}
        put = self._call(f"write {uri}", "put_object", Bucket=bucket, Key=key, Body=data,
                         **extra)
        return ObjectInfo(uri, len(data), put["ETag"].strip('"'))

    def delete(self, uri: str) -> None:
        """Remove one object; no error when it does not exist."""
        if not is_s3(uri):
            local_path(uri).unlink(missing_ok=True)
            return
        bucket, key = split_s3(uri)
        self._call(f"delete {uri}", "delete_object", Bucket=bucket, Key=key)

    def ensure_bucket(self, uri: str) -> None:
        if not is_s3(uri):
            return
        bucket, _ = split_s3(uri)
        try:
            self._call(f"head bucket {bucket}", "head_bucket", Bucket=bucket)
        except Exception:
            self._call(f"create bucket {bucket}", "create_bucket", Bucket=bucket)


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
