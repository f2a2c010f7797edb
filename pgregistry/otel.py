"""OpenTelemetry metrics for every pool of a registry (the ``pgregistry[otel]`` extra).

``instrument(registry=None, meter_provider=None)`` reports the connection-pool instruments of
the OpenTelemetry database semantic conventions (``db.client.connection.*``), each with
``db.client.connection.pool.name`` set to the pool's registry name (a tenant pool's is
``"<template>.<key>"``, the name its log records and stats carry):

- sizes, read from :meth:`Registry.stats` each time the SDK collects (observable
  up-down counters): ``db.client.connection.count`` (``db.client.connection.state`` =
  ``idle`` / ``used``), ``.idle.max``, ``.idle.min``, ``.max``, ``.pending_requests``;
- events, queued by a pool observer as they happen and recorded when the SDK collects (an
  SDK record costs microseconds; a queue append on the caller's thread costs nanoseconds):
  the ``.timeouts`` counter and the ``.create_time``, ``.wait_time``, ``.use_time``
  histograms, in seconds.

Only ``opentelemetry-api`` is needed here; the application brings the SDK and its exporter.
A registry that is never instrumented pays nothing: pools without an observer skip the hook.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import (
    CallbackOptions,
    Counter,
    Histogram,
    Meter,
    MeterProvider,
    Observation,
)

import pgregistry
from pgregistry.pool import PooledPg, PoolStats
from pgregistry.registry import Registry

if TYPE_CHECKING:
    from opentelemetry.util.types import Attributes

__all__ = ["BUCKETS", "Instrumentation", "instrument"]

POOL_NAME = "db.client.connection.pool.name"
STATE = "db.client.connection.state"

#: Histogram bucket boundaries in seconds, given to the SDK as advice (a View overrides them).
#: The semantic conventions advise these for ``db.client.operation.duration``; the pool
#: histograms have none of their own, and the SDK's default buckets are meant for milliseconds.
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0)


def default_registry() -> Registry:
    """The process-wide registry (``pgregistry.default_registry``)."""
    return pgregistry.default_registry


def all_pool_stats(registry: Registry) -> Iterator[PoolStats]:
    """The stats of every built pool of ``registry``, tenant pools included."""
    stats = registry.stats()
    yield from stats["pools"].values()
    for group in stats["tenants"].values():
        yield from group.values()


class _Observer:
    """Queues one pool's events for the next collection (see :class:`Instrumentation`)."""

    __slots__ = ("_attributes", "_events")

    def __init__(self, instrumentation: Instrumentation, pool: PooledPg) -> None:
        self._attributes: Attributes = {POOL_NAME: pool.name}
        self._events = instrumentation.events

    def on_connect(self, seconds: float) -> None:
        self._events.append((_CREATE, seconds, self._attributes))

    def on_checkout(self, waited: float) -> None:
        self._events.append((_WAIT, waited, self._attributes))

    def on_checkin(self, used: float) -> None:
        self._events.append((_USE, used, self._attributes))

    def on_timeout(self) -> None:
        self._events.append((_TIMEOUT, 1, self._attributes))


_CREATE, _WAIT, _USE, _TIMEOUT = range(4)
#: Events kept for the next collection at most; older ones are dropped (and counted) when
#: nothing collects.
MAX_PENDING_EVENTS = 100_000


class Instrumentation:
    """What :func:`instrument` returns: the instruments, and :meth:`uninstrument`."""

    def __init__(self, registry: Registry, meter_provider: MeterProvider | None) -> None:
        self.registry = registry
        self._active = True
        self._lock = threading.Lock()
        meter = metrics.get_meter("pgregistry", pgregistry.__version__, meter_provider)
        gauges: list[tuple[str, str, str, Callable[[PoolStats], Iterable[Observation]]]] = [
            (
                "db.client.connection.count",
                "{connection}",
                "The number of connections that are currently in state described by the state"
                " attribute",
                _counts,
            ),
            (
                "db.client.connection.idle.max",
                "{connection}",
                "The maximum number of idle open connections allowed (maxcached; not reported"
                " when 0, no limit)",
                _limit("maxcached"),
            ),
            (
                "db.client.connection.idle.min",
                "{connection}",
                "The minimum number of idle open connections allowed (mincached)",
                _limit("mincached", report_zero=True),
            ),
            (
                "db.client.connection.max",
                "{connection}",
                "The maximum number of open connections allowed (maxconnections; not reported"
                " when 0, no limit)",
                _limit("maxconnections"),
            ),
            (
                "db.client.connection.pending_requests",
                "{request}",
                "The number of current pending requests for an open connection",
                _limit("waiting", report_zero=True),
            ),
        ]
        for name, unit, description, observe in gauges:
            meter.create_observable_up_down_counter(
                name, callbacks=[self._callback(observe)], unit=unit, description=description
            )
        self.timeouts: Counter = meter.create_counter(
            "db.client.connection.timeouts",
            unit="{timeout}",
            description="The number of connection timeouts that have occurred trying to obtain a"
            " connection from the pool",
        )
        self.create_time: Histogram = _histogram(
            meter,
            "db.client.connection.create_time",
            unit="s",
            description="The time it took to create a new connection",
        )
        self.wait_time: Histogram = _histogram(
            meter,
            "db.client.connection.wait_time",
            unit="s",
            description="The time it took to obtain an open connection from the pool",
        )
        self.use_time: Histogram = _histogram(
            meter,
            "db.client.connection.use_time",
            unit="s",
            description="The time between borrowing a connection and returning it to the pool",
        )
        #: Events from the pools, recorded into the instruments when the SDK collects: an SDK
        #: record costs microseconds, a deque append on the caller's thread does not.
        self.events: deque[tuple[int, float, Attributes]] = deque(maxlen=MAX_PENDING_EVENTS)
        self._record = (
            self.create_time.record,
            self.wait_time.record,
            self.use_time.record,
            self.timeouts.add,
        )
        registry.observe(self._observer)

    def flush(self) -> None:
        """Record the queued events now (every collection does this first)."""
        events, record = self.events, self._record
        while True:
            try:
                kind, value, attributes = events.popleft()
            except IndexError:
                return
            record[kind](value, attributes)

    def _observer(self, pool: PooledPg) -> _Observer | None:
        return _Observer(self, pool) if self._active else None

    def _callback(
        self, observe: Callable[[PoolStats], Iterable[Observation]]
    ) -> Callable[[CallbackOptions], Iterable[Observation]]:
        def callback(options: CallbackOptions) -> Iterable[Observation]:
            # The SDK runs observable callbacks before it reads the synchronous instruments,
            # so events flushed here are in this very collection.
            self.flush()
            if not self._active:  # an SDK cannot drop an observable instrument: go quiet
                return []
            return [seen for stats in all_pool_stats(self.registry) for seen in observe(stats)]

        return callback

    @property
    def active(self) -> bool:
        """True until :meth:`uninstrument`."""
        return self._active

    def uninstrument(self) -> None:
        """Stop reporting: pools drop their observer, the size callbacks report nothing.

        The instruments stay known to the meter provider (the API cannot remove them).
        Idempotent.
        """
        with self._lock:
            if not self._active:
                return
            self._active = False
        self.registry.unobserve(self._observer)
        self.flush()

    def __repr__(self) -> str:
        state = "active" if self._active else "uninstrumented"
        return f"<pgregistry.otel.Instrumentation of {self.registry!r} {state}>"


def _histogram(meter: Meter, name: str, *, unit: str, description: str) -> Histogram:
    """A histogram in seconds with :data:`BUCKETS` as advice, where the API takes advice."""
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=BUCKETS
        )
    except TypeError:  # opentelemetry-api before the advisory parameter
        return meter.create_histogram(name, unit=unit, description=description)


def _counts(stats: PoolStats) -> Iterable[Observation]:
    name = stats["name"]
    return (
        Observation(stats["idle"], {POOL_NAME: name, STATE: "idle"}),
        Observation(stats["in_use"], {POOL_NAME: name, STATE: "used"}),
    )


def _limit(key: str, *, report_zero: bool = False) -> Callable[[PoolStats], Iterable[Observation]]:
    def observe(stats: PoolStats) -> Iterable[Observation]:
        value = stats[key]  # type: ignore[literal-required]
        if not value and not report_zero:  # 0 means "no limit": no number says that
            return ()
        return (Observation(value, {POOL_NAME: stats["name"]}),)

    return observe


def instrument(
    registry: Registry | None = None, meter_provider: MeterProvider | None = None
) -> Instrumentation:
    """Report every pool of ``registry`` (default: the process-wide one) to OpenTelemetry.

    ``meter_provider``: where the instruments are made (default: the global one, set by the
    application's SDK setup). Pools built later, tenant pools included, are reported too.
    Call :meth:`Instrumentation.uninstrument` on the result to stop.
    """
    return Instrumentation(registry if registry is not None else default_registry(), meter_provider)
