"""Which failures a task retry can help with (include/mlops_core/errors.py ``retryable``), the
question MlopsStageOperator.execute and the trainer container ask before failing at once."""

from __future__ import annotations

import json

import pytest

from include.mlops_core.errors import (
    ConfigError,
    CorruptFileError,
    ServiceUnavailableError,
    ServingError,
    retryable,
)
from include.mlops_core.trainer import EXIT_DATA, EXIT_OTHER, classify


def _raised_while_handling(cause: BaseException, err: BaseException) -> BaseException:
    try:
        try:
            raise cause
        except BaseException:
            raise err  # noqa: B904 - the implicit chain is what is tested
    except BaseException as raised:
        return raised


def _json_error() -> json.JSONDecodeError:
    try:
        json.loads("<html><body>502 Bad Gateway</body></html>")
    except json.JSONDecodeError as err:
        return err
    raise AssertionError("unreachable")


def _pydantic_error() -> Exception:
    from include.mlops_core.config import TuningConfig

    try:
        TuningConfig(n_trials=0)
    except ValueError as err:
        return err
    raise AssertionError("unreachable")


@pytest.mark.parametrize(("err", "expected"), [
    pytest.param(CorruptFileError("corrupt file"), False, id="bad-data"),
    pytest.param(ConfigError("unknown dataset"), False, id="bad-config"),
    pytest.param(ServiceUnavailableError("MLflow unreachable"), True, id="outage"),
    pytest.param(ServingError("no answer", reason="unreachable"), True, id="serving-down"),
    pytest.param(ServingError("other version", reason="wrong_version"), False,
                 id="serving-disagrees"),
    pytest.param(_pydantic_error(), False, id="pydantic-config"),
    pytest.param(ValueError("max_iter must be >= 1"), False, id="parameter-check"),
    pytest.param(_json_error(), True, id="proxy-error-page"),
    pytest.param(UnicodeDecodeError("utf-8", b"\xff", 0, 1, "invalid start byte"), True,
                 id="cut-off-answer"),
    pytest.param(_raised_while_handling(ConnectionResetError("reset by peer"),
                                        ValueError("no JSON in the answer")), True,
                 id="value-error-from-a-network-error"),
    pytest.param(_raised_while_handling(KeyError("x"), ValueError("bad column")), False,
                 id="value-error-from-a-lookup"),
    pytest.param(_raised_while_handling(FileNotFoundError("config.yaml"), ValueError("bad")),
                 False, id="value-error-from-a-local-file"),
    pytest.param(RuntimeError("MLflow API error"), True, id="anything-else"),
])
def test_retryable(err: BaseException, expected: bool) -> None:
    assert retryable(err) is expected


def test_the_trainer_container_classifies_alike() -> None:
    assert classify(_json_error()) == ("error", EXIT_OTHER)  # retried by Airflow
    assert classify(ValueError("max_iter must be >= 1")) == ("data", EXIT_DATA)
    assert classify(ServiceUnavailableError("S3 unreachable")) == ("error", EXIT_OTHER)
    assert classify(CorruptFileError("corrupt file")) == ("data", EXIT_DATA)
