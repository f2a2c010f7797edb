"""Opening a PyGreSQL connection: retries with a capped backoff within ``reconnect_timeout``,
a refused login failed at once, and each failed attempt said once (rate-limited per pool).
"""

from __future__ import annotations

import logging
import time
from typing import Any

import pg

from .conninfo import redact
from .errors import AuthenticationError, ServerFullError, ServerUnavailableError
from .failures import is_auth_failure, is_server_full
from .logs import RateLimit

__all__ = ["open_db"]

# A failing connect is logged at most this often per logger (pool), in seconds.
LOG_INTERVAL = 10.0
_FAILURES: dict[str, RateLimit] = {}

# Reconnect backoff: first pause and cap, in seconds.
_BACKOFF_START = 0.02
_BACKOFF_CAP = 0.25


def open_db(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    secrets: tuple[str, ...],
    reconnect_timeout: float,
    logger: logging.Logger,
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
    while True:
        attempt += 1
        try:
            db = pg.DB(*args, **kwargs)
        except pg.Error as exc:
            message = redact(str(exc).strip(), secrets)
        else:
            if attempt > 1:
                logger.info(
                    "connected after %d attempts in %.2f s", attempt, time.monotonic() - started
                )
            return db
        if is_auth_failure(message):
            # Waiting does not fix a wrong password or a missing role: fail at once.
            logger.warning("login refused, not retried: %s", message)
            raise AuthenticationError(message) from None
        remaining = deadline - time.monotonic()
        if remaining <= 0:
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
        time.sleep(min(pause, remaining))
        pause = min(pause * 1.5, _BACKOFF_CAP)


def _say_failure(logger: logging.Logger, what: str, message: str) -> bool:
    """Log a failed connect unless one was said for this logger lately; True if said."""
    limit = _FAILURES.setdefault(logger.name, RateLimit(LOG_INTERVAL))
    count = limit.hit()
    if count:
        logger.warning(
            "could not connect (%d failure(s) since last said), %s: %s", count, what, message
        )
    return bool(count)
