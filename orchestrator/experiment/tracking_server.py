"""Talking to an MLflow tracking server over HTTP without hanging a sweep.

MLflow's client retries a failed request 7 times with a backoff factor of 2 and a 120 s timeout:
minutes per call when the server is gone, and Tune's event loop, which runs the trial logger,
stands still meanwhile. So the driver

* uses shorter defaults (:data:`HTTP_DEFAULTS`: about 15 s per call against a closed port), only
  where the user has not set the variable (set ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` higher to wait
  longer for a server that restarts), and keeps MLflow's "View run at" lines for a server off
  stdout, which belongs to ``--json``'s one object;
* asks a server once, without retries, before anything runs (:func:`check_server`);
* turns "cannot reach the server" into :class:`TrackingUnavailable`, a one-line error
  (:class:`GuardedClient`), so that the trial logger can keep results for later and a sweep can
  stop cleanly, resumable.
"""
from __future__ import annotations

import contextlib
import functools
import http.client
import os
import re
import socket
import urllib.parse
from typing import Any, Callable, Iterator

from orchestrator.experiment.checks import ConfigError

__all__ = ["HTTP_DEFAULTS", "TrackingUnavailable", "GuardedClient", "check_server", "guard", "unavailable_reason",
           "use_driver_http_defaults", "is_server", "browse_hint"]

#: MLflow's HTTP settings in the driver unless set in the environment: 4 retries 0, 2, 4, 8 s
#: apart (plus up to 1 s jitter each), 10 s for a response, no run URLs printed on stdout
HTTP_DEFAULTS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "4", "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                 "MLFLOW_HTTP_REQUEST_TIMEOUT": "10", "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}
#: the up-front check: one request, no retries
_PROBE = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}
_ERRNO = re.compile(r"\[Errno -?\d+\] ([^'\"\)\]]+)")
_NETWORK_ERRORS = (ConnectionError, TimeoutError, socket.timeout, http.client.HTTPException)


class TrackingUnavailable(ConfigError):
    """The tracking server cannot be reached: refused, timed out, gone mid-request."""

    def __init__(self, uri: str, reason: str, hint: str = "") -> None:
        self.uri = uri
        self.reason = reason
        super().__init__("tracking.uri", f"the MLflow server {uri} does not answer ({reason})"
                                         + (f"; {hint}" if hint else ""))


def use_driver_http_defaults() -> None:
    """:data:`HTTP_DEFAULTS` for every variable the user has not set (MLflow reads them per request)."""
    for name, value in HTTP_DEFAULTS.items():
        os.environ.setdefault(name, value)


def unavailable_reason(err: BaseException) -> str | None:
    """Why the server could not be reached, in a few words; None when ``err`` is another error
    (a bad request, a bug). MLflow wraps requests' errors in ``MlflowException``: its cause or
    context is searched too."""
    import requests

    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, (requests.exceptions.ConnectionError, requests.exceptions.Timeout,
                                requests.exceptions.RetryError, requests.exceptions.ChunkedEncodingError,
                                *_NETWORK_ERRORS)):
            return _short_reason(current)
        current = current.__cause__ or current.__context__
    return None


def _short_reason(err: BaseException) -> str:
    text = str(err)
    found = _ERRNO.findall(text)
    if found:
        return found[-1].strip()
    if "timed out" in text.lower() or isinstance(err, (TimeoutError, socket.timeout)):
        return "timed out"
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection closed without a response"
    if "too many" in text and "error responses" in text:
        return text[text.index("too many"):].split(")")[0]
    return type(err).__name__


@contextlib.contextmanager
def guard(uri: str, hint: Callable[[], str] = lambda: "") -> Iterator[None]:
    """Re-raise "cannot reach the server" as :class:`TrackingUnavailable` (``hint()`` appended)."""
    try:
        yield
    except TrackingUnavailable:
        raise
    except Exception as err:
        reason = unavailable_reason(err)
        if reason is None:
            raise
        raise TrackingUnavailable(uri, reason, hint()) from err


class GuardedClient:
    """An ``MlflowClient`` whose calls raise :class:`TrackingUnavailable` where the server cannot
    be reached (other errors pass unchanged)."""

    def __init__(self, client: Any, uri: str, hint: Callable[[], str] = lambda: "") -> None:
        self._client = client
        self._uri = uri
        self._hint = hint

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__") or name in ("_client", "_uri", "_hint"):  # copy/pickle probe before __init__
            raise AttributeError(name)
        value = getattr(self._client, name)
        if not callable(value):
            return value

        @functools.wraps(value)
        def call(*args: Any, **kwargs: Any) -> Any:
            with guard(self._uri, self._hint):
                return value(*args, **kwargs)

        return call


@contextlib.contextmanager
def _environment(values: dict[str, str]) -> Iterator[None]:
    previous = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in previous.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def check_server(uri: str) -> None:
    """One request without retries to the http(s) tracking server ``uri``:
    :class:`TrackingUnavailable` when nothing answers, :class:`ConfigError` when it answers with
    an error (not an MLflow server, no permission)."""
    from mlflow import MlflowClient

    try:
        with _environment(_PROBE):
            MlflowClient(tracking_uri=uri).search_experiments(max_results=1)
    except Exception as err:
        reason = unavailable_reason(err)
        if reason is not None:
            raise TrackingUnavailable(uri, reason, "start it, or give a tracking.uri (--tracking-uri) that answers") from None
        first = (str(err).strip().splitlines() or [type(err).__name__])[0][:300]
        raise ConfigError("tracking.uri", f"{uri} answered the first request with an error: {first}") from None


def is_server(uri: str) -> bool:
    """Whether tracking URI ``uri`` names a tracking server (HTTP) rather than a store."""
    return urllib.parse.urlsplit(uri).scheme in ("http", "https")


def browse_hint(uri: str) -> str:
    """How to browse the runs of tracking URI ``uri``: a server serves its UI at its own URL
    (``mlflow ui`` cannot open it as a store); a store (a SQLite file) needs ``mlflow ui``."""
    return uri if is_server(uri) else f"mlflow ui --backend-store-uri {uri}"
