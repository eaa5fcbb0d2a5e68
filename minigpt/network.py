"""Every request minigpt makes to the hub is bounded in time.

huggingface_hub's own timeouts (HF_HUB_ETAG_TIMEOUT, HF_HUB_DOWNLOAD_TIMEOUT: 10 s) bound one read
from a socket, not a request: a hub that sends a byte every few seconds passes every read and
never finishes (huggingface_hub even resets its retries whenever a byte arrives), and its
repository-info request has no timeout at all, so a hub that accepts the connection and never
answers holds it forever. So minigpt watches progress instead:

- `bounded(call, ...)` runs a hub call (snapshot_download) in a worker thread and waits for it.
  When the hub has made no progress for `hub_timeout()` seconds (MINIGPT_HUB_TIMEOUT, default 30)
  it gives up, raising HubStalled. The wait is exact: it does not depend on what the worker is
  blocked in (a read, a retry's pause, a TLS handshake).
- Progress is an answer's headers, then every PROGRESS_BYTES of its body, then its end.
- The worker is stopped as well, so that a program that called minigpt.load does not go on
  downloading in the background: huggingface_hub's HTTP client gets a transport that caps every
  read at the limit and, once the call is abandoned, raises at the next request or chunk
  (huggingface_hub then deletes its temporary file). A client the user installed with
  huggingface_hub.set_client_factory is left alone: the wait is bounded all the same.
- While a call is watched, huggingface_hub's retry warnings ("Retrying in 1s [Retry 1/5]") are
  not shown: the error that ends the call says what happened, in one line.
"""

import logging
import math
import os
import threading
import time
from functools import lru_cache

from .errors import InputError

TIMEOUT_VARIABLE = "MINIGPT_HUB_TIMEOUT"
# Seconds without progress. huggingface_hub waits 10 s for one read; a hub silent three times as
# long is not coming back, and a command then gives up within 31 s (with CLEANUP_SECONDS).
DEFAULT_TIMEOUT = 30.0
# Bytes of a body that count as progress: at the default limit a transfer slower than 256 KiB in
# 30 s (8.7 kB/s) is given up, which no working connection is, and a byte a second never gets there.
PROGRESS_BYTES = 256 * 1024
CLEANUP_SECONDS = 1.0


class HubStalled(Exception):
    """The hub made no progress for `seconds`: hub.py turns this into a HubError naming the model."""

    def __init__(self, seconds: float):
        super().__init__(f"no progress for {seconds:g} s")
        self.seconds = seconds


def hub_timeout() -> float:
    """Seconds the hub may go without progress: MINIGPT_HUB_TIMEOUT, else DEFAULT_TIMEOUT."""
    text = os.environ.get(TIMEOUT_VARIABLE, "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = math.nan
    if not 0 < seconds < math.inf:
        raise InputError(f"{TIMEOUT_VARIABLE} must be a positive number of seconds, found {text!r}")
    return seconds


class _Watch:
    """One watched hub call: when the hub last made progress, and whether the caller gave up."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.last_progress = time.monotonic()
        self.abandoned = False

    def idle(self) -> float:
        return time.monotonic() - self.last_progress


# The calls being watched. Requests run in huggingface_hub's own threads (snapshot_download
# fetches files in a pool), which cannot be told apart, so progress counts for every call under
# way, and requests stop only once every call under way is abandoned.
_WATCHES = set()
_LOCK = threading.Lock()


def _watches() -> list:
    with _LOCK:
        return list(_WATCHES)


def _progress():
    now = time.monotonic()
    for watch in _watches():
        watch.last_progress = now


def _check_abandoned(watches):
    if watches and all(watch.abandoned for watch in watches):
        raise HubStalled(min(watch.seconds for watch in watches))


def bounded(call, *args, **kwargs):
    """call(*args, **kwargs), given up with HubStalled once the hub has made no progress for
    hub_timeout() seconds. Exceptions of the call are raised here as they are."""
    seconds = hub_timeout()
    _install()
    watch = _Watch(seconds)
    outcome = {}
    # An Event, not Thread.join: a join interrupted by Ctrl-C marks the thread as ended when it is
    # not (CPython's _wait_for_tstate_lock), and the worker would never be told to stop.
    done = threading.Event()

    def work():
        try:
            outcome["value"] = call(*args, **kwargs)
        except BaseException as err:  # handed to the waiting thread
            outcome["error"] = err
        finally:
            with _LOCK:
                _WATCHES.discard(watch)
            done.set()

    with _LOCK:
        _WATCHES.add(watch)
    threading.Thread(target=work, name="minigpt-hub", daemon=True).start()  # daemon: exit never waits for it
    try:
        while not done.wait(max(seconds - watch.idle(), 0.0) + 0.01):
            if watch.idle() >= seconds:
                watch.abandoned = True
                # A moment for the worker to stop at its next chunk, so that huggingface_hub
                # deletes its temporary file and closes its progress bars before the error is shown.
                done.wait(CLEANUP_SECONDS)
                raise HubStalled(seconds)
    finally:
        if not done.is_set():  # given up, or Ctrl-C: the worker stops at its next request or chunk
            watch.abandoned = True
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


# ---------------------------------------------------------------------------------------------
# Inside huggingface_hub: its HTTP client and its log

_installed = False


def _install():
    """Once per process: the watching transport in huggingface_hub's client (unless the user set
    a client factory of their own) and the filter of its retry warnings."""
    global _installed
    with _LOCK:
        if _installed:
            return
        _installed = True
    from huggingface_hub import set_client_factory
    from huggingface_hub.utils import _http

    if getattr(_http, "_GLOBAL_CLIENT_FACTORY", None) is _http.default_client_factory:
        set_client_factory(_watched_client)
    for name in ("huggingface_hub.utils._http", "huggingface_hub.file_download"):
        logging.getLogger(name).addFilter(_quiet_retries)


def _quiet_retries(record: logging.LogRecord) -> bool:
    """logging filter: drop huggingface_hub's warnings about retrying while a call is watched."""
    if record.levelno > logging.WARNING or not _watches():
        return True
    message = record.getMessage()
    retrying = ("Retrying in", "Rate limited", "thrown while requesting", "Trying to resume download", "Error while downloading")
    return not any(part in message for part in retrying)


def _watched_client():
    """The client huggingface_hub would build (its event hooks, proxies from the environment,
    TLS settings), each of its transports wrapped in a watching one. httpx2 takes no transport
    wrapper but a replacement, which would drop the proxies, hence its private attributes: were
    they to change, the client is used as it is, and only the wait is bounded."""
    from huggingface_hub.utils._http import default_client_factory

    client = default_client_factory()
    watched, _ = _watching_classes()
    if hasattr(client, "_transport") and isinstance(getattr(client, "_mounts", None), dict):
        client._transport = watched(client._transport)
        client._mounts = {pattern: None if inner is None else watched(inner) for pattern, inner in client._mounts.items()}
    return client


@lru_cache(maxsize=1)
def _watching_classes():
    """The transport and the response stream, defined on first use: httpx2 is only imported
    when minigpt talks to the hub (a local folder or the bundled model never does)."""
    import httpx2

    class WatchedTransport(httpx2.BaseTransport):
        """Sends requests through `inner`; while a call is watched, caps each read at its limit,
        counts progress, and refuses to go on once the call is abandoned."""

        def __init__(self, inner):
            self.inner = inner

        def handle_request(self, request):
            watches = _watches()
            if not watches:
                return self.inner.handle_request(request)
            _check_abandoned(watches)
            # Each read, connect and write waits at most the limit (huggingface_hub sets none on
            # some requests), so an abandoned worker ends soon after its caller gave up.
            limit = min(watch.seconds for watch in watches)
            timeouts = request.extensions.get("timeout") or {}
            request.extensions["timeout"] = {
                kind: limit if timeouts.get(kind) is None else min(timeouts[kind], limit)
                for kind in ("connect", "read", "write", "pool")
            }
            response = self.inner.handle_request(request)
            _progress()
            response.stream = WatchedStream(response.stream)
            return response

        def close(self):
            self.inner.close()

    class WatchedStream(httpx2.SyncByteStream):
        """A response body: progress every PROGRESS_BYTES and at its end; stops once abandoned."""

        def __init__(self, inner):
            self.inner = inner

        def __iter__(self):
            received = 0
            for chunk in self.inner:
                _check_abandoned(_watches())
                received += len(chunk)
                if received >= PROGRESS_BYTES:
                    _progress()
                    received = 0
                yield chunk
            _progress()

        def close(self):
            self.inner.close()

    return WatchedTransport, WatchedStream
