"""Logging helpers of the pools: structured fields on every record, and rate-limited messages.

Every pool logs on ``pgregistry.pool.<name>``; :class:`LogFields` puts the pool's fields
(``pool``, ``tenant``, ...) on each record of that logger for JSON formatters, and
:class:`RateLimit` keeps a message that repeats while a server is down to one line per interval.
"""

from __future__ import annotations

import logging
import time

__all__ = ["LogFields", "RateLimit"]


class RateLimit:
    """Whether a repeating message is due: at most once per ``interval`` seconds.

    :meth:`hit` counts an occurrence and returns how many to report (0: not yet due).
    Approximate under threads by design: a lost count only shortens a log line.
    """

    __slots__ = ("_count", "_interval", "_said_at")

    def __init__(self, interval: float) -> None:
        self._interval = interval
        self._said_at = -interval
        self._count = 0

    def hit(self) -> int:
        self._count += 1
        now = time.monotonic()
        if now < self._said_at + self._interval:
            return 0
        count, self._count, self._said_at = self._count, 0, now
        return count


class LogFields(logging.Filter):
    """Adds a pool's fields (``pool``, ``tenant``, ...) to every record of its logger.

    A filter on the pool's own logger, so no call site has to pass them; the steady
    connections of the pool log on the same logger. A record's own ``extra`` wins.
    """

    def __init__(self, fields: dict[str, object]) -> None:
        super().__init__()
        self.fields = fields

    def filter(self, record: logging.LogRecord) -> bool:
        for key, value in self.fields.items():
            if key not in record.__dict__:
                setattr(record, key, value)
        return True

    @classmethod
    def attach(cls, logger: logging.Logger, pool: str) -> dict[str, object]:
        """The fields dict of ``logger``'s filter (one per logger: pools rebuilt by a reload
        share their name, and so their logger)."""
        for existing in logger.filters:
            if isinstance(existing, cls):
                existing.fields.clear()
                existing.fields["pool"] = pool
                return existing.fields
        fields: dict[str, object] = {"pool": pool}
        logger.addFilter(cls(fields))
        return fields
