"""include/mlops_core/serving.py: request parsing and its refusals, the alias poll and the atomic swap,
the routes, batching, the health check and ``smoke_test``. A real model is trained, saved as
MLflow saves it (skops, with a signature) and loaded through the trusted loader; the registry
is a stand-in (the real one: tests/integration/test_serving.py)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from include.mlops_core import serving
from include.mlops_core.errors import ModelRefusedError, PipelineError, ServingError
from include.mlops_core.serving import (
    Column,
    InputSchema,
    ModelSlot,
    RequestError,
    ServedModel,
    ServingApp,
    ServingConfig,
    parse_request,
)
from tests.unit.helpers import churn_config, demo_frame

NAME = "churn_unit"
# starlette's TestClient drives the ASGI app (lifespan included) over httpx; it warns that it
# will want httpx2 one day, which changes nothing here.
pytestmark = pytest.mark.filterwarnings("ignore:Using `httpx` with `starlette.testclient`")


# -- a real model, saved and loaded as the server does ---------------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    import mlflow.sklearn
    import yaml
    from mlflow.models import infer_signature

    from include.mlops_core import modeling
    from include.mlops_core.model_loading import load_local

    config = churn_config(training={"hyperparameters": {"max_iter": 5}})
    frame = demo_frame(config, rows=300)
    features = [c.name for c in config.feature_columns]
    model = modeling.train(frame, config)
    directory = tmp_path_factory.mktemp("model") / "model"
    example = frame[features].head(5)
    mlflow.sklearn.save_model(model, str(directory), serialization_format="skops",
                              skops_trusted_types=modeling.untrusted_types(model),
                              signature=infer_signature(example, model.predict(example)),
                              pip_requirements=["scikit-learn"])
    loaded = load_local(directory, "hist_gradient_boosting")
    mlmodel = yaml.safe_load((directory / "MLmodel").read_text())
    rows = json.loads(frame[features].head(20).to_json(orient="records"))
    return {"model": loaded, "schema": InputSchema.from_mlmodel(mlmodel, loaded),
            "rows": rows, "features": features, "frame": frame[features].head(20)}


class FakeRegistry:
    """The registry as the server sees it: which version the alias points at, and loading it.
    ``down`` makes every lookup fail; versions in ``broken`` fail to load."""

    def __init__(self, model: Any, schema: InputSchema) -> None:
        self.model, self.schema = model, schema
        self.aliases: dict[str, str] = {}
        self.broken: set[str] = set()
        self.down = False
        self.loads: list[str] = []

    def resolve(self, name: str, alias: str) -> tuple[str, str] | None:
        if self.down:
            raise ConnectionError("MLflow did not answer")
        version = self.aliases.get(name)
        return None if version is None else (version, f"run{version}")

    def load(self, name: str, version: str, alias: str) -> ServedModel:
        self.loads.append(version)
        if version in self.broken:
            raise ModelRefusedError(f"refusing to load model models:/{name}/{version}: planted")
        return ServedModel(name, version, alias, f"run{version}", "hist_gradient_boosting",
                           self.model, self.schema, time.time(), 0.01,
                           serving.FastInput.build(self.model, self.schema))


@pytest.fixture
def registry(trained: dict[str, Any]) -> FakeRegistry:
    found = FakeRegistry(trained["model"], trained["schema"])
    found.aliases[NAME] = "1"
    return found


def make_app(registry: FakeRegistry, models: tuple[str, ...] = (NAME,), **options: Any) -> ServingApp:
    config = ServingConfig(tracking_uri="http://mlflow.invalid", models=list(models),
                           **{"poll_seconds": 60.0, **options})
    return ServingApp(config, registry)


@pytest.fixture
def client(registry: FakeRegistry) -> Any:
    from starlette.testclient import TestClient

    with TestClient(make_app(registry)) as found:
        yield found


# -- the schema ------------------------------------------------------------------------------------
def test_schema_comes_from_the_signature(trained: dict[str, Any]) -> None:
    schema = trained["schema"]
    assert schema.names == tuple(trained["features"])
    kinds = {c.name: c.kind for c in schema.columns}
    assert kinds["tenure_months"] == "number" and kinds["contract"] == "string"


def test_schema_without_signature_falls_back_to_the_fitted_columns(trained: dict[str, Any]) -> None:
    schema = InputSchema.from_mlmodel({"flavors": {}}, trained["model"])
    assert schema.names == tuple(trained["features"])
    assert {c.kind for c in schema.columns} == {"any"}
    with pytest.raises(ValueError, match="columns are unknown"):
        InputSchema.from_mlmodel({}, object())


# -- parsing ---------------------------------------------------------------------------------------
def _bodies(rows: list[dict[str, Any]]) -> list[bytes]:
    columns = list(rows[0])
    data = [[row[c] for c in columns] for row in rows]
    return [json.dumps(body).encode() for body in (
        {"rows": rows}, {"dataframe_records": rows},
        {"columns": columns, "data": data}, {"dataframe_split": {"columns": columns, "data": data}})]


def test_every_body_shape_gives_the_same_columns(trained: dict[str, Any]) -> None:
    import numpy as np

    rows, schema = trained["rows"][:3], trained["schema"]
    parsed = [parse_request(body, schema) for body in _bodies(rows)]
    for other in parsed[1:]:
        assert other.rows == 3
        for name in schema.names:
            left, right = parsed[0].columns[name], other.columns[name]
            assert left.dtype == right.dtype
            assert all(a == b or (a != a and b != b) for a, b in zip(left, right, strict=True))
    single = parse_request(json.dumps({"row": rows[0], "scores": True}).encode(), schema)
    assert single.rows == 1 and single.scores
    assert single.columns["tenure_months"].dtype == np.float64


def test_null_is_a_missing_value_the_imputers_fill(trained: dict[str, Any]) -> None:
    row = {**trained["rows"][0], "total_charges": None, "contract": None}
    parsed = parse_request(json.dumps({"row": row}).encode(), trained["schema"])
    assert parsed.columns["total_charges"][0] != parsed.columns["total_charges"][0]  # NaN
    assert parsed.columns["contract"][0] != parsed.columns["contract"][0]


ROW = {"tenure_months": 12, "monthly_charges": 70.5, "total_charges": 846.0,
       "contract": "one_year", "payment_method": "card", "internet_service": "dsl",
       "support_calls": 1, "age": 40, "region": "north"}


@pytest.mark.parametrize(("body", "status", "match"), [
    pytest.param(b"", 400, "empty body", id="empty"),
    pytest.param(b"{not json", 400, "not valid JSON", id="not-json"),
    pytest.param(b"[1, 2]", 400, "not an object", id="a-list"),
    pytest.param(b'{"instances": []}', 400, "unknown key.*'instances'", id="unknown-key"),
    pytest.param(b'{"rows": [], "row": {}}', 400, "more than one of", id="two-shapes"),
    pytest.param(b'{"scores": true}', 400, "no rows", id="no-rows-key"),
    pytest.param(b'{"rows": {"a": 1}}', 400, "must be a list of objects", id="rows-not-list"),
    pytest.param(b'{"row": [1]}', 400, '"row" must be an object', id="row-not-object"),
    pytest.param(b'{"rows": [], "scores": "yes"}', 400, '"scores" must be true or false',
                 id="scores-not-bool"),
    pytest.param(b'{"rows": []}', 422, "no rows to predict", id="zero-rows"),
    pytest.param(b'{"rows": [1]}', 422, "row 0 is an integer, not an object", id="row-scalar"),
    pytest.param(json.dumps({"row": {**ROW, "colour": "red"}}).encode(), 422,
                 r"row 0: unknown column 'colour'; the model takes tenure_months, ",
                 id="unknown-column"),
    pytest.param(json.dumps({"row": {k: v for k, v in ROW.items() if k != "age"}}).encode(),
                 422, r"row 0: missing column 'age'.*a value may be null", id="missing-column"),
    pytest.param(json.dumps({"rows": [ROW, {**ROW, "age": "forty"}]}).encode(), 422,
                 r"row 1, column 'age': expected a number \(or null\), got a string \"forty\"",
                 id="string-for-number"),
    pytest.param(json.dumps({"row": {**ROW, "age": True}}).encode(), 422,
                 r"column 'age': expected a number.*got a boolean true", id="bool-for-number"),
    pytest.param(json.dumps({"row": {**ROW, "region": 3}}).encode(), 422,
                 r"column 'region': expected a string.*got an integer 3", id="number-for-string"),
    pytest.param(json.dumps({"row": {**ROW, "region": ["north"]}}).encode(), 422,
                 r"column 'region': expected a string.*got a list", id="nested"),
    pytest.param(json.dumps({"columns": ["age"], "data": [[1]]}).encode(), 422,
                 "missing columns 'tenure_months'", id="split-missing"),
    pytest.param(json.dumps({"columns": list(ROW), "data": [list(ROW.values())[:-1]]}).encode(),
                 422, r"row 0 of \"data\" is not a list of 9 values", id="split-short-row"),
    pytest.param(json.dumps({"dataframe_split": [1]}).encode(), 400,
                 "must be an object with", id="split-not-object"),
    pytest.param(json.dumps({"rows": [ROW] * 6}).encode(), 422,
                 r"6 rows in one request; this server takes at most 5 \(--max-rows\)",
                 id="too-many-rows"),
])
def test_bad_requests_are_refused_with_what_to_send(trained: dict[str, Any], body: bytes,
                                                    status: int, match: str) -> None:
    with pytest.raises(RequestError, match=match) as err:
        parse_request(body, trained["schema"], max_rows=5)
    assert err.value.status == status


def test_integer_columns_take_integral_floats_only() -> None:
    schema = InputSchema((Column("n", "integer"),))
    assert parse_request(b'{"rows": [{"n": 3}, {"n": 4.0}]}', schema).columns["n"].tolist() == [3, 4]
    assert str(parse_request(b'{"row": {"n": 3}}', schema).columns["n"].dtype) == "int64"
    with pytest.raises(RequestError, match="expected an integer"):
        parse_request(b'{"row": {"n": 3.5}}', schema)
    with pytest.raises(RequestError, match="out of range"):
        parse_request(b'{"row": {"n": 100000000000000000000000}}', schema)


# -- the numpy input path --------------------------------------------------------------------------
def test_the_numpy_input_path_gives_the_pipelines_numbers(trained: dict[str, Any]) -> None:
    """Bitwise: the preprocessor's matrix, predictions and scores, with missing values and a
    category the model never saw."""
    import dataclasses
    import warnings

    import numpy as np
    import pandas as pd

    model, schema = trained["model"], trained["schema"]
    fast = serving.FastInput.build(model, schema)
    assert fast is not None and fast.numeric and fast.categorical
    rows = [*trained["rows"], {**ROW, "total_charges": None, "contract": None},
            {**ROW, "region": "atlantis", "age": None}]
    request = parse_request(json.dumps({"rows": rows}).encode(), schema)
    frame = pd.DataFrame(request.columns, columns=list(schema.names))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # the unknown category
        assert np.array_equal(fast.transform(request.columns),
                              model.named_steps["features"].transform(frame))
        expected = model.predict(frame).tolist(), model.predict_proba(frame)[:, 1].tolist()
    base = ServedModel(NAME, "1", "champion", None, "hist_gradient_boosting", model, schema,
                       0.0, 0.0)
    for served in (base, dataclasses.replace(base, fast=fast)):
        assert serving.predict(served, request.columns, scores=True) == expected


def test_other_pipeline_shapes_keep_their_own_path(trained: dict[str, Any]) -> None:
    import copy

    from sklearn.impute import SimpleImputer

    model, schema = trained["model"], trained["schema"]
    assert serving.FastInput.build(Flaky(), InputSchema((Column("age", "number"),))) is None
    assert serving.FastInput.build(model.named_steps["model"], schema) is None
    odd = copy.deepcopy(model)
    numeric = odd.named_steps["features"].named_transformers_["numeric"]
    numeric.steps[0] = ("imputer", SimpleImputer(add_indicator=True))
    assert serving.FastInput.build(odd, schema) is None
    as_any = InputSchema(tuple(Column(c.name, "any") for c in schema.columns))
    assert serving.FastInput.build(model, as_any) is None  # string columns must be strings
    skewed = copy.deepcopy(model)
    skewed.named_steps["features"].named_transformers_["numeric"].steps[1][1].scale_ = \
        skewed.named_steps["features"].named_transformers_["numeric"].steps[1][1].scale_ + 1e-9
    fast = serving.FastInput._from(skewed, schema)
    assert fast is not None and not fast._same_as(model, schema)  # a difference is caught


# -- the routes ------------------------------------------------------------------------------------
def test_predict_single_and_batch_carry_the_version(client: Any, trained: dict[str, Any]) -> None:
    rows = trained["rows"]
    expected = trained["model"].predict(trained["frame"]).tolist()
    one = client.post("/predict", json={"row": rows[0]})
    assert one.status_code == 200, one.text
    assert one.headers["x-model-version"] == "1" and one.headers["x-model-name"] == NAME
    assert one.json() == {"model_name": NAME, "model_version": "1", "alias": "champion",
                          "predictions": expected[:1]}
    batch = client.post(f"/models/{NAME}/predict", json={"rows": rows, "scores": True})
    assert batch.status_code == 200, batch.text
    body = batch.json()
    assert body["predictions"] == expected and len(body["scores"]) == len(rows)
    proba = trained["model"].predict_proba(trained["frame"])[:, 1]
    assert body["scores"] == pytest.approx(proba.tolist())


def test_a_refused_request_names_the_model_and_version(client: Any) -> None:
    answer = client.post("/predict", content=b'{"row": {"colour": "red"}}')
    assert answer.status_code == 422
    assert answer.headers["x-model-version"] == "1"
    body = answer.json()
    assert body["model_version"] == "1" and "unknown column 'colour'" in body["error"]
    assert "Traceback" not in answer.text


def test_health_version_and_model_info(client: Any, trained: dict[str, Any]) -> None:
    health = client.get("/health")
    assert health.status_code == 200 and health.headers["x-model-version"] == "1"
    assert health.json()["status"] == "ok"
    assert health.json()["models"][NAME]["version"] == "1"
    assert client.get("/version").json() == {
        "models": {NAME: {"version": "1", "alias": "champion", "run_id": "run1"}}}
    info = client.get(f"/models/{NAME}").json()
    assert [c["name"] for c in info["columns"]] == trained["features"] and info["scores"]


@pytest.mark.parametrize(("method", "path", "status", "match"), [
    pytest.param("GET", "/nope", 404, "no route GET /nope; routes: POST /predict", id="no-route"),
    pytest.param("GET", "/predict", 405, "/predict takes POST, not GET", id="get-predict"),
    pytest.param("POST", "/health", 405, "/health takes GET", id="post-health"),
    pytest.param("POST", "/models/other/predict", 404, "does not serve model 'other'; it serves "
                 + NAME, id="unknown-model"),
])
def test_wrong_routes_say_which_exist(client: Any, method: str, path: str, status: int,
                                      match: str) -> None:
    answer = client.request(method, path)
    assert answer.status_code == status
    assert match in answer.json()["error"]


def test_body_size_limit(registry: FakeRegistry) -> None:
    from starlette.testclient import TestClient

    with TestClient(make_app(registry, max_body_bytes=100)) as client:
        answer = client.post("/predict", content=b"x" * 101)
    assert answer.status_code == 413 and "--max-body-bytes" in answer.json()["error"]


def test_several_models_each_on_its_route(registry: FakeRegistry) -> None:
    from starlette.testclient import TestClient

    registry.aliases["second"] = "7"
    with TestClient(make_app(registry, models=(NAME, "second"))) as client:
        answer = client.post("/predict", json={"row": ROW})
        assert answer.status_code == 404
        assert f"/models/{NAME}/predict, /models/second/predict" in answer.json()["error"]
        second = client.post("/models/second/predict", json={"row": ROW})
        assert second.json()["model_version"] == "7" and second.headers["x-model-version"] == "7"
        assert client.get("/version").headers["x-model-version"] == f"{NAME}=1,second=7"


def test_no_version_yet_is_503_and_waiting(registry: FakeRegistry) -> None:
    from starlette.testclient import TestClient

    registry.aliases.clear()
    with TestClient(make_app(registry)) as client:
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["models"][NAME]["status"] == "waiting"
        answer = client.post("/predict", json={"row": ROW})
        assert answer.status_code == 503
        assert "no version of churn_unit has alias @champion yet" in answer.json()["error"]


# -- the alias poll and the swap -------------------------------------------------------------------
def test_swap_on_alias_move_and_a_failed_load_keeps_the_old_version(registry: FakeRegistry) -> None:
    slot = ModelSlot(NAME, retry_seconds=0.2)
    first = slot.refresh(registry)
    assert first.version == "1" and slot.status == "ok"
    assert slot.refresh(registry) is first and registry.loads == ["1"]  # unchanged: no reload

    registry.aliases[NAME] = "2"  # promotion
    assert slot.refresh(registry).version == "2" and slot.status == "ok"

    registry.aliases[NAME] = "3"
    registry.broken.add("3")  # its load fails: v2 keeps serving
    assert slot.refresh(registry).version == "2"
    assert slot.status == "degraded"
    assert "loading v3 failed: ModelRefusedError" in slot.describe()["error"]
    assert slot.describe()["alias_version"] == "3"
    slot.refresh(registry)
    assert registry.loads.count("3") == 1, "a failed version is not reloaded on every poll"
    time.sleep(0.25)
    registry.broken.clear()
    assert slot.refresh(registry).version == "3" and slot.status == "ok"  # retried later

    registry.aliases[NAME] = "1"  # rollback
    assert slot.refresh(registry).version == "1"

    registry.down = True
    assert slot.refresh(registry).version == "1" and slot.status == "degraded"
    assert "looking up @champion failed: ConnectionError" in slot.describe()["error"]
    registry.down = False
    del registry.aliases[NAME]
    assert slot.refresh(registry).version == "1"
    assert "alias @champion no longer exists; still serving v1" in slot.describe()["error"]


def test_a_failed_first_load_is_unavailable(registry: FakeRegistry) -> None:
    registry.broken.add("1")
    slot = ModelSlot(NAME)
    assert slot.refresh(registry) is None
    assert slot.status == "unavailable"
    assert "nothing to serve" in serving.unavailable_message(slot)


def test_the_poller_swaps_without_a_restart(registry: FakeRegistry) -> None:
    from starlette.testclient import TestClient

    with TestClient(make_app(registry, poll_seconds=0.05)) as client:
        assert client.post("/predict", json={"row": ROW}).json()["model_version"] == "1"
        registry.aliases[NAME] = "2"
        deadline = time.monotonic() + 5
        while client.get("/version").json()["models"][NAME]["version"] != "2":
            assert time.monotonic() < deadline, "the alias move was not picked up"
            time.sleep(0.05)
        assert client.post("/predict", json={"row": ROW}).headers["x-model-version"] == "2"


# -- batching --------------------------------------------------------------------------------------
class Flaky:
    """A model that cannot score a row whose age is 999 (a value the schema lets through)."""

    classes_ = [0, 1]

    def predict(self, frame: Any) -> Any:
        import numpy as np

        if (frame["age"] == 999).any():
            raise ValueError("age 999 is not a thing")
        return np.asarray(frame["age"] > 50, dtype=int)


async def _asgi_post(app: ServingApp, body: bytes) -> tuple[int, dict[str, Any]]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": body, "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "POST", "path": "/predict", "headers": []},
              receive, send)
    return sent[0]["status"], json.loads(sent[1]["body"])


def test_concurrent_requests_are_scored_together_and_errors_stay_with_their_request() -> None:
    registry = FakeRegistry(Flaky(), InputSchema((Column("age", "number"),)))
    registry.aliases[NAME] = "4"
    app = make_app(registry, max_batch_rows=100)
    app.start()
    calls: list[int] = []
    real = serving.predict

    def counting(served: ServedModel, columns: Any, *, scores: bool = False) -> Any:
        calls.append(len(columns["age"]))
        return real(served, columns, scores=scores)

    ages = [10, 60, 999, 70, 20]

    async def burst() -> list[tuple[int, dict[str, Any]]]:
        return await asyncio.gather(*(_asgi_post(app, json.dumps({"row": {"age": a}}).encode())
                                      for a in ages))

    try:
        serving.predict = counting
        answers = asyncio.run(burst())
    finally:
        serving.predict = real
        app.stop()
    assert [status for status, _ in answers] == [200, 200, 422, 200, 200]
    assert [body.get("predictions") for _, body in answers] == [[0], [1], None, [1], [0]]
    assert "could not score these rows: ValueError: age 999" in answers[2][1]["error"]
    assert max(calls) > 1, f"no two requests were scored together: {calls}"


# -- smoke_test and the health check against a real HTTP server ------------------------------------
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def live(registry: FakeRegistry) -> Any:
    """The app on uvicorn on 127.0.0.1 in a thread, polling the fake registry every 0.05 s."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(make_app(registry, poll_seconds=0.05), host="127.0.0.1",
                                           port=port, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "uvicorn did not start"
        time.sleep(0.02)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(timeout=10)


def test_smoke_test_passes_once_the_expected_version_serves(live: str, registry: FakeRegistry) -> None:
    registry.aliases[NAME] = "2"
    result = serving.smoke_test(live + "/", model_name=NAME, expected_version="2",
                                rows=[ROW, ROW], timeout=10)
    assert result["url"] == live and result["model_name"] == NAME and result["version"] == "2"
    assert len(result["predictions"]) == 2 and result["latency_ms"] > 0


def test_smoke_test_fails_on_the_wrong_version(live: str) -> None:
    started = time.monotonic()
    with pytest.raises(ServingError) as err:
        serving.smoke_test(live, model_name=NAME, expected_version="9", rows=[ROW], timeout=1)
    assert 1 <= time.monotonic() - started < 5
    assert err.value.reason == "wrong_version" and not err.value.retryable
    assert isinstance(err.value, PipelineError)
    assert "it serves v1, not v9" in str(err.value) and "its /health says ok" in str(err.value)
    assert str(err.value).endswith("(runbook: docs/runbooks/serving.md#wrong-version)")


def test_smoke_test_fails_on_bad_answers_at_once(live: str) -> None:
    with pytest.raises(ServingError, match="does not serve model 'other'") as err:
        serving.smoke_test(live, model_name="other", expected_version="1", rows=[ROW], timeout=30)
    assert err.value.reason == "bad_response"
    started = time.monotonic()
    with pytest.raises(ServingError, match=r"answered HTTP 422: row 0: unknown column 'x'"):
        serving.smoke_test(live, model_name=NAME, expected_version="1", rows=[{"x": 1}],
                           timeout=30)
    assert time.monotonic() - started < 5
    with pytest.raises(ValueError, match="at least one row"):
        serving.smoke_test(live, model_name=NAME, expected_version="1", rows=[])


def test_smoke_test_of_a_server_that_is_not_there() -> None:
    with pytest.raises(ServingError) as err:
        serving.smoke_test(f"http://127.0.0.1:{_free_port()}", model_name=NAME,
                           expected_version="1", rows=[ROW], timeout=0.5)
    assert err.value.reason == "unreachable" and err.value.retryable
    assert "got no answer" in str(err.value)
    assert str(err.value).endswith("(runbook: docs/runbooks/serving.md#unreachable)")


def test_health_check_command(live: str, registry: FakeRegistry) -> None:
    healthy, line = serving.check(live)
    assert healthy and line.startswith("ok: churn_unit ok v1")
    registry.aliases[NAME] = "5"
    registry.broken.add("5")
    time.sleep(0.3)
    healthy, line = serving.check(live)
    assert healthy and line.startswith("degraded")  # it still serves v1
    assert serving.check(f"http://127.0.0.1:{_free_port()}")[0] is False


def test_health_check_waiting_and_unavailable(registry: FakeRegistry) -> None:
    from starlette.testclient import TestClient

    registry.aliases.clear()
    with TestClient(make_app(registry)) as client:
        original = serving._http

        def through_client(method: str, url: str, body: Any = None, **_: Any) -> Any:
            answer = client.request(method, url.split("testserver", 1)[-1], content=body)
            return answer.status_code, answer.headers, answer.content

        serving._http = through_client
        try:
            assert serving.check("http://testserver")[0] is True  # waits for a promotion
            registry.aliases[NAME] = "3"
            registry.broken.add("3")
            next(iter(serving_app_slots(client))).refresh(registry)
            healthy, line = serving.check("http://testserver")
            assert not healthy and "loading v3 failed" in line
        finally:
            serving._http = original


def serving_app_slots(client: Any) -> Any:
    return client.app.slots.values()


# -- the command line and the module's weight ------------------------------------------------------
def test_command_line_refusals(monkeypatch: pytest.MonkeyPatch,
                               capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.delenv("MLOPS_SERVING_MODELS", raising=False)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    with pytest.raises(SystemExit):
        serving.main(["serve", "--tracking-uri", "http://x"])
    assert "no model to serve" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serving.main(["serve", "--model", "a"])
    assert "no MLflow server" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        serving.main(["serve", "--model", "a", "--tracking-uri", "http://x", "--workers", "0"])
    assert "--workers must be at least 1" in capsys.readouterr().err


def test_log_lines_never_show_a_password() -> None:
    assert serving.safe_uri("http://viewer:s3cret@mlflow:5000/x") == "http://mlflow:5000/x"
    assert serving.safe_uri("http://mlflow:5000") == "http://mlflow:5000"


def test_importing_the_module_is_light() -> None:
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    code = ("import sys; import include.mlops_core.serving; "
            "print(sorted(m for m in ('numpy', 'pandas', 'sklearn', 'mlflow', 'uvicorn', "
            "'airflow') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, capture_output=True,
                          text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]"
