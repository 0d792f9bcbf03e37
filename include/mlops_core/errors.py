"""Exceptions that carry what an on-call engineer needs: what broke, where, and which runbook."""

from __future__ import annotations

RUNBOOKS = "docs/runbooks"


class PipelineError(Exception):
    """Base class; ``runbook`` names the page in docs/runbooks/ that explains the fix.

    ``retryable`` tells the operator whether a task retry can help; most of these cannot (the
    same bytes, the same config, the same registry state), so the task fails at once.
    """

    runbook = "README.md"
    retryable = False

    def __init__(self, message: str, *, runbook: str | None = None) -> None:
        super().__init__(message)
        if runbook:
            self.runbook = runbook

    def __str__(self) -> str:
        return f"{self.args[0]} (runbook: {RUNBOOKS}/{self.runbook})"


class DataError(PipelineError):
    """The input data is wrong; retrying cannot help, fix the data or the dataset config."""

    runbook = "bad-data.md"


class MissingPartitionError(DataError):
    """No data file under one or more partition prefixes; ``missing`` lists them (what a run
    that waits for its data lists again)."""

    runbook = "missing-partition.md"

    def __init__(self, message: str, *, missing: list[str] | tuple[str, ...] = (),
                 runbook: str | None = None) -> None:
        super().__init__(message, runbook=runbook)
        self.missing = list(missing)


class SchemaError(DataError):
    runbook = "schema-mismatch.md"


class CorruptFileError(DataError):
    runbook = "corrupt-file.md"


class ValidationFailedError(DataError):
    runbook = "validation-failed.md"


class DriftCheckError(DataError):
    """The drift check cannot run on these frames (empty, nothing to compare)."""

    runbook = "drift-detected.md"


class ConfigError(PipelineError):
    """The dataset config or a Param is wrong (unknown dataset, bad hyperparameters)."""

    runbook = "bad-data.md"


class OverrideRefusedError(ConfigError):
    """A run's conf sets a key the deployment's policy does not let a run set, or loosens a gate
    the policy keeps (include/mlops_core/policy.py)."""

    runbook = "refused-by-policy.md"


class ModelRefusedError(PipelineError):
    """A model artifact is not loaded: its serialization format or a type it lists is outside
    the fixed allow-list of its model family (include/mlops_core/model_loading.py)."""

    runbook = "refused-by-policy.md#a-model-that-lists-a-type-outside-the-allow-list"


class ServiceUnavailableError(PipelineError):
    """A remote service (S3, MLflow) did not answer after retries with backoff."""

    runbook = "service-unreachable.md"
    retryable = True  # it may be back by the next Airflow retry


class CredentialsError(PipelineError):
    """A service answered but rejected (or never got) the credentials of its Connection."""

    runbook = "service-unreachable.md"


class PromotionError(PipelineError):
    """The registry did not end up in the state we asked for (e.g. a concurrent promotion)."""

    runbook = "promotion-failed.md"


class RollbackError(PipelineError):
    """A rollback cannot be done as asked: no champion, no previous champion in the audit trail,
    a target version that never passed the gate, or an alias that did not end up where it was
    set."""

    runbook = "rollback.md"


class TrainerError(PipelineError):
    """The trainer container could not run or failed; ``error_class`` says how.

    Classes: ``engine`` (Docker unreachable), ``image`` (missing, cannot pull), ``no_gpu`` (GPU
    asked for, none visible, no CPU fallback), ``oom`` (killed at the memory limit), ``timeout``,
    ``cuda`` (CUDA / driver error), ``data`` (the trainer rejected the data or config), ``error``
    (any other non-zero exit). Each has a section in the runbook.
    """

    RETRYABLE = frozenset({"engine", "cuda", "error"})  # may pass on another try or worker
    runbook = "trainer-container.md"

    def __init__(self, error_class: str, message: str, *, exit_code: int | None = None,
                 runbook: str | None = None) -> None:
        super().__init__(message, runbook=runbook or
                         f"trainer-container.md#{error_class.replace('_', '-')}")
        self.error_class = error_class
        self.exit_code = exit_code
        self.retryable = error_class in self.RETRYABLE


class ServingError(PipelineError):
    """The model server (include/mlops_core/serving.py) failed a check: ``reason`` says how.

    Reasons: ``unreachable`` (no HTTP answer from the server until the timeout), ``wrong_version``
    (it answers, but still serves another version of the model than the one expected),
    ``bad_response`` (an error status, a body that is not the expected JSON, or the wrong number
    of predictions). Each has a section in the runbook. Only ``unreachable`` is retryable: a
    server that restarts may answer on the next try; the others mean the server runs and
    disagrees.
    """

    REASONS = ("unreachable", "wrong_version", "bad_response")
    runbook = "serving.md"

    def __init__(self, message: str, *, reason: str = "bad_response",
                 runbook: str | None = None) -> None:
        super().__init__(message, runbook=runbook or f"serving.md#{reason.replace('_', '-')}")
        self.reason = reason
        self.retryable = reason == "unreachable"


def retryable(err: BaseException) -> bool:
    """Whether a task retry can help with ``err``; what ``MlopsStageOperator.execute`` asks
    before it fails a task at once (docs/architecture.md#failure-handling).

    - A :class:`PipelineError` says so itself (``retryable``).
    - A ``ValueError`` is a config, parameter or data check (pydantic, scikit-learn, the checks
      of this package): the same input gives it again, so no. Except two kinds that come from
      a transport, not from the input: a body that does not decode (``JSONDecodeError``,
      ``UnicodeDecodeError``: a proxy's HTML error page, a cut-off answer) and a ValueError
      raised while handling, or because of, a network error (an ``OSError`` in its chain).
    - Anything else (an MLflow API error, an S3 error, a bug): yes, Airflow's retries apply.
    """
    import json

    if isinstance(err, PipelineError):
        return err.retryable
    if isinstance(err, json.JSONDecodeError | UnicodeDecodeError):
        return True
    if isinstance(err, ValueError):
        return _caused_by_network(err)
    return True


_LOCAL_FILE_ERRORS = (FileNotFoundError, FileExistsError, PermissionError, IsADirectoryError,
                      NotADirectoryError)


def _caused_by_network(err: BaseException) -> bool:
    seen: set[int] = set()
    cause = err.__cause__ or err.__context__
    while cause is not None and id(cause) not in seen:
        # requests', urllib3's and socket errors are OSErrors; a local file's are not network
        if isinstance(cause, OSError) and not isinstance(cause, _LOCAL_FILE_ERRORS):
            return True
        seen.add(id(cause))
        cause = cause.__cause__ or cause.__context__
    return False
