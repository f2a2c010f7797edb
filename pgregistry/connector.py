"""Opening a PyGreSQL connection: retries with a capped backoff within ``reconnect_timeout``,
a refused login failed at once, and each failed attempt said once (rate-limited per pool).
"""

from __future__ import annotations

import logging
import random
import threading
import time
from typing import Any

import pg

from .conninfo import redact
from .errors import AuthenticationError, ServerFullError, ServerUnavailableError
from .failures import is_auth_failure, is_server_full
from .logs import RateLimit

__all__ = ["Admission", "open_db"]

# A failing connect is logged at most this often per logger (pool), in seconds.
LOG_INTERVAL = 10.0
_FAILURES: dict[str, RateLimit] = {}

# Reconnect backoff: first pause and cap, in seconds.
_BACKOFF_START = 0.02
_BACKOFF_CAP = 0.25


class Admission:
    """Connects of one pool while its server is down: one caller probes, the others wait.

    A failed connect marks the server down. From then on, one connect at a time is let
    through: the prober retries with a capped, jittered backoff while the others wait for
    its outcome instead of each retrying on its own; once a connect succeeds, the waiting
    ones go one at a time, so a recovering server sees connections reopened as needed, not
    a stampede. While the server is up, a connect only checks a flag.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._down = False
        self._owner: int | None = None  # the thread whose connect is let through now

    def enter(self, deadline: float) -> bool:
        """Wait for this caller's turn (None needed while the server is up); False when
        ``deadline`` (monotonic) passed first."""
        if not self._down and self._owner is None:
            return True
        me = threading.get_ident()
        with self._cond:
            if self._owner == me or (not self._down and self._owner is None):
                return True
            while self._owner is not None:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self._cond.wait(remaining)
            self._owner = me
            return True

    def succeeded(self) -> None:
        """A connect worked: the server is up; the next waiting caller goes."""
        if not self._down and self._owner is None:
            return
        with self._cond:
            self._down = False
            if self._owner == threading.get_ident():
                self._owner = None
                self._cond.notify()

    def failed(self) -> None:
        """A connect failed: the server is down; this caller keeps the turn to probe."""
        with self._cond:
            self._down = True
            if self._owner is None:
                self._owner = threading.get_ident()

    def leave(self) -> None:
        """This caller gives up (its time is up): the next waiting caller probes."""
        with self._cond:
            if self._owner == threading.get_ident():
                self._owner = None
                self._cond.notify()

    @property
    def down(self) -> bool:
        """Whether the last connect of the pool failed."""
        return self._down


def open_db(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    secrets: tuple[str, ...],
    reconnect_timeout: float,
    logger: logging.Logger,
    admission: Admission | None = None,
) -> pg.DB:
    """Open a ``pg.DB(*args, **kwargs)``, retrying within ``reconnect_timeout``.

    Raises :class:`AuthenticationError` at once for a refused login and
    :class:`ServerUnavailableError` when the time is up, with libpq's message redacted.

    Each failed attempt is said once: the first of a series at WARNING with the backoff
    state (at most once per 10 s per pool, with the count of those not said) and, if it
    was said, the giving up; the retries at DEBUG; connecting after failures at INFO.
    """
    started = time.monotonic()
    deadline = started + reconnect_timeout
    pause = _BACKOFF_START
    attempt = 0
    announced = False
    gate = admission if admission is not None else _NO_GATE
    message = "the server is down: another connect of this pool is probing it"
    try:
        while True:
            attempt += 1
            if not gate.enter(deadline):
                # Another caller of this pool has been probing the server all along: it is
                # still down. Nothing was tried here, so nothing more is logged.
                raise ServerUnavailableError(message) from None
            try:
                db = pg.DB(*args, **kwargs)
            except pg.Error as exc:
                message = redact(str(exc).strip(), secrets)
                if not is_server_full(message) and not is_auth_failure(message):
                    gate.failed()
            else:
                gate.succeeded()
                if attempt > 1:
                    logger.info(
                        "connected after %d attempts in %.2f s", attempt, time.monotonic() - started
                    )
                return db
            if is_auth_failure(message):
                gate.leave()
                # Waiting does not fix a wrong password or a missing role: fail at once.
                logger.warning("login refused, not retried: %s", message)
                raise AuthenticationError(message) from None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                gate.leave()
                if is_server_full(message):
                    # A limit of the server, not an outage: a pool waits it out and says so.
                    raise ServerFullError(message) from None
                if attempt == 1:
                    _say_failure(logger, "not retried (reconnect_timeout is 0)", message)
                elif announced:  # the series was said: so is its end
                    logger.warning(
                        "gave up connecting after %d attempts in %.2f s (reconnect_timeout): %s",
                        attempt,
                        time.monotonic() - started,
                        message,
                    )
                # Raised outside the except block so that not even __context__ keeps libpq's
                # raw message: it may echo a malformed conninfo, password included.
                raise ServerUnavailableError(message) from None
            if attempt == 1:
                announced = _say_failure(
                    logger,
                    f"retrying for up to {remaining:.1f} s, pauses {pause:.2f} s growing to "
                    f"{_BACKOFF_CAP:.2f} s",
                    message,
                )
            else:
                logger.debug("connect attempt %d failed, next in %.2f s", attempt, pause)
            # Jittered, so that the probes of many processes do not fall in step.
            time.sleep(min(pause * (0.5 + random.random()), remaining))
            pause = min(pause * 1.5, _BACKOFF_CAP)
    except BaseException:
        gate.leave()  # whatever ended it (a signal too): the next caller may probe
        raise


def _say_failure(logger: logging.Logger, what: str, message: str) -> bool:
    """Log a failed connect unless one was said for this logger lately; True if said."""
    limit = _FAILURES.setdefault(logger.name, RateLimit(LOG_INTERVAL))
    count = limit.hit()
    if count:
        logger.warning(
            "could not connect (%d failure(s) since last said), %s: %s", count, what, message
        )
    return bool(count)


class _NoGate:
    """The gate of a connection of no pool: every connect goes through."""

    def enter(self, deadline: float) -> bool:
        return True

    def succeeded(self) -> None:
        pass

    def failed(self) -> None:
        pass

    def leave(self) -> None:
        pass


_NO_GATE = _NoGate()
