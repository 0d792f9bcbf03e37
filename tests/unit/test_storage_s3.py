"""include/mlops_core/storage.py on s3:// URIs without a server: a real boto3 client whose requests a
botocore Stubber answers, so each test checks the request ObjectStore sends (the create-only
``IfNoneMatch``, the paging token) and how it reads the answer (the errors and their messages).
tests/integration/test_storage_s3.py runs the same calls against a real SeaweedFS."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from typing import Any

import pytest
from botocore.stub import Stubber

from include.mlops_core.errors import CredentialsError, PipelineError, ServiceUnavailableError
from include.mlops_core.storage import (
    ObjectExistsError,
    ObjectInfo,
    ObjectNotFoundError,
    ObjectStore,
    make_s3_client,
)

ENDPOINT = "http://127.0.0.1:8333"
HINT = "Airflow connection 'mlops_s3'"


@pytest.fixture
def client() -> Any:
    return make_s3_client(endpoint_url=ENDPOINT, access_key="AKIAUNIT", secret_key="unit-secret")


@pytest.fixture
def stub(client: Any) -> Iterator[Stubber]:
    with Stubber(client) as stubber:
        yield stubber
        stubber.assert_no_pending_responses()


@pytest.fixture
def store(client: Any) -> ObjectStore:
    return ObjectStore(client, endpoint=ENDPOINT, attempts=2, backoff_seconds=0.01,
                       conn_hint=HINT)


def test_create_only_sends_if_none_match_and_returns_the_etag(store: ObjectStore,
                                                               stub: Stubber) -> None:
    stub.add_response("put_object", {"ETag": '"abc"'},
                      {"Bucket": "mlops", "Key": "audit/v1.json", "Body": b"first",
                       "IfNoneMatch": "*"})

    info = store.write_bytes("s3://mlops/audit/v1.json", b"first", create_only=True)

    assert info == ObjectInfo("s3://mlops/audit/v1.json", 5, "abc")


def test_a_plain_write_sends_no_condition(store: ObjectStore, stub: Stubber) -> None:
    stub.add_response("put_object", {"ETag": '"def"'},
                      {"Bucket": "mlops", "Key": "runs/x.json", "Body": b"{}"})  # exact params
    assert store.write_bytes("s3://mlops/runs/x.json", b"{}").etag == "def"


@pytest.mark.parametrize("code", ["PreconditionFailed", "ConditionalRequestConflict"])
def test_create_only_refused_by_the_store_is_object_exists(store: ObjectStore, stub: Stubber,
                                                           code: str) -> None:
    stub.add_client_error("put_object", service_error_code=code, http_status_code=412 if
                          code == "PreconditionFailed" else 409)

    with pytest.raises(ObjectExistsError, match="already exists") as err:
        store.write_bytes("s3://mlops/audit/v1.json", b"second", create_only=True)

    assert "write s3://mlops/audit/v1.json" in str(err.value)


def test_list_follows_the_continuation_token_skips_folder_markers_and_sorts(
        store: ObjectStore, stub: Stubber) -> None:
    stub.add_response("list_objects_v2", {
        "IsTruncated": True, "NextContinuationToken": "t1",
        "Contents": [{"Key": "churn/date=2025-01-02/part-0.csv", "Size": 2, "ETag": '"b"'},
                     {"Key": "churn/date=2025-01-02/", "Size": 0, "ETag": '"d"'}]},
        {"Bucket": "data", "Prefix": "churn/"})
    stub.add_response("list_objects_v2", {
        "IsTruncated": False,
        "Contents": [{"Key": "churn/date=2025-01-01/part-0.csv", "Size": 3, "ETag": '"a"'}]},
        {"Bucket": "data", "Prefix": "churn/", "ContinuationToken": "t1"})

    assert store.list("s3://data/churn/") == [
        ObjectInfo("s3://data/churn/date=2025-01-01/part-0.csv", 3, "a"),
        ObjectInfo("s3://data/churn/date=2025-01-02/part-0.csv", 2, "b")]


def test_list_prefixes_pages_too_and_lists_the_bucket_root(store: ObjectStore,
                                                           stub: Stubber) -> None:
    stub.add_response("list_objects_v2", {"IsTruncated": True, "NextContinuationToken": "t1",
                                          "CommonPrefixes": [{"Prefix": "date=2025-01-02/"}]},
                      {"Bucket": "data", "Prefix": "", "Delimiter": "/"})
    stub.add_response("list_objects_v2", {"IsTruncated": False,
                                          "CommonPrefixes": [{"Prefix": "date=2025-01-01/"}]},
                      {"Bucket": "data", "Prefix": "", "Delimiter": "/",
                       "ContinuationToken": "t1"})

    assert store.list_prefixes("s3://data") == ["date=2025-01-01", "date=2025-01-02"]


def test_a_missing_object_is_not_found_and_does_not_exist(store: ObjectStore,
                                                          stub: Stubber) -> None:
    stub.add_client_error("get_object", service_error_code="NoSuchKey", http_status_code=404)
    stub.add_client_error("head_object", service_error_code="404", http_status_code=404)

    with pytest.raises(ObjectNotFoundError, match="read s3://mlops/nope: object does not exist"):
        store.read_bytes("s3://mlops/nope")
    assert store.exists("s3://mlops/nope") is False


def test_read_info_and_delete(store: ObjectStore, stub: Stubber) -> None:
    import io

    from botocore.response import StreamingBody

    stub.add_response("get_object", {"Body": StreamingBody(io.BytesIO(b"hello"), 5)},
                      {"Bucket": "mlops", "Key": "k"})
    stub.add_response("head_object", {"ContentLength": 5, "ETag": '"e"'},
                      {"Bucket": "mlops", "Key": "k"})
    stub.add_response("delete_object", {}, {"Bucket": "mlops", "Key": "k"})

    assert store.read_bytes("s3://mlops/k") == b"hello"
    assert store.info("s3://mlops/k") == ObjectInfo("s3://mlops/k", 5, "e")
    store.delete("s3://mlops/k")


def test_a_missing_bucket_names_the_endpoint_and_the_runbook(store: ObjectStore,
                                                             stub: Stubber) -> None:
    stub.add_client_error("get_object", service_error_code="NoSuchBucket", http_status_code=404)
    with pytest.raises(PipelineError, match=f"bucket does not exist on {ENDPOINT}") as err:
        store.read_bytes("s3://nobucket/k")
    assert err.value.runbook == "bad-data.md"


@pytest.mark.parametrize("code", ["InvalidAccessKeyId", "SignatureDoesNotMatch", "AccessDenied"])
def test_rejected_credentials_name_the_connection(store: ObjectStore, stub: Stubber,
                                                  code: str) -> None:
    stub.add_client_error("put_object", service_error_code=code, http_status_code=403)
    with pytest.raises(CredentialsError, match=f"rejected the credentials \\({code}\\); "
                                               f"check {HINT}"):
        store.write_bytes("s3://mlops/k", b"x")


def test_ensure_bucket_creates_it_only_when_head_fails(store: ObjectStore, stub: Stubber) -> None:
    stub.add_response("head_bucket", {}, {"Bucket": "there"})
    stub.add_client_error("head_bucket", service_error_code="404", http_status_code=404)
    stub.add_response("create_bucket", {}, {"Bucket": "new"})

    store.ensure_bucket("s3://there/x")
    store.ensure_bucket("s3://new")


def test_an_endpoint_that_does_not_answer_is_retried_then_named() -> None:
    with socket.socket() as sock:  # a port nobody listens on: connections are refused at once
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    store = ObjectStore(make_s3_client(endpoint_url=dead, access_key="a", secret_key="b"),
                        attempts=3, backoff_seconds=0.01, conn_hint=HINT)

    with pytest.raises(ServiceUnavailableError) as err:
        store.write_bytes("s3://mlops/k", b"x", create_only=True)

    message = str(err.value)
    assert f"S3 endpoint {dead} did not answer write s3://mlops/k after 3 attempts" in message
    assert HINT in message


def test_the_store_keeps_the_hook_settings(client: Any, store: ObjectStore) -> None:
    assert (store.endpoint, store.attempts, store.backoff_seconds, store.conn_hint) == \
        (ENDPOINT, 2, 0.01, HINT)
    assert store._s3 is client
    assert ObjectStore(client).endpoint == ENDPOINT  # taken from the client when not given
