"""Reachability checks with retries and backoff that say what they are doing."""

from __future__ import annotations

import logging

from tenacity import RetryError, Retrying, before_sleep_log, stop_after_attempt, wait_exponential

from include.mlops_core.errors import ServiceUnavailableError

log = logging.getLogger(__name__)


def wait_for_http(url: str, *, service: str, attempts: int = 4, backoff_seconds: float = 2.0,
                  timeout: float = 5.0, hint: str = "") -> None:
    """GET ``url`` until it answers 2xx; else raise ServiceUnavailableError naming the service."""

    import requests

    def probe() -> None:
        response = requests.get(url, timeout=timeout)
        if response.status_code >= 300:
            raise OSError(f"HTTP {response.status_code}")

    try:
        for attempt in Retrying(stop=stop_after_attempt(attempts),
                                wait=wait_exponential(multiplier=backoff_seconds, max=60),
                                before_sleep=before_sleep_log(log, logging.WARNING)):
            with attempt:
                probe()
    except RetryError as err:
        cause = err.last_attempt.exception()
        raise ServiceUnavailableError(
            f"{service} at {url} unreachable after {attempts} attempts with exponential backoff "
            f"({type(cause).__name__}: {cause}). Check that it is running and that "
            f"{hint or 'its connection'} points at it"
        ) from cause
