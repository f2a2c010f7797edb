"""Prometheus metrics for every pool of a registry (the ``pgregistry[prometheus]`` extra).

The figures are those of :mod:`pgregistry.otel`, named the way OpenTelemetry's Prometheus
exporters translate them: dots become underscores, a unit in braces is dropped, seconds get
``_seconds``, counters ``_total``; attributes become labels the same way
(``db_client_connection_pool_name``, ``db_client_connection_state``): for example
``db_client_connection_count`` (labels pool name and state ``idle``/``used``),
``db_client_connection_max``, ``db_client_connection_wait_time_seconds_bucket`` and
``db_client_connection_timeouts_total``.

``instrument(registry=None, prometheus_registry=None)`` picks the mode by itself:

* one process: sizes are read from :meth:`Registry.stats` at every scrape by a collector;
* prometheus_client's multiprocess mode (``PROMETHEUS_MULTIPROC_DIR`` set, as under gunicorn),
  where custom collectors are not allowed: sizes are gauges each worker writes (summed over
  live workers, ``livesum``), refreshed on pool events at most every ``refresh`` seconds and
  by a daemon thread; call ``prometheus_client.multiprocess.mark_process_dead(pid)`` from
  gunicorn's ``child_exit`` as its documentation says.

The histograms and the timeouts counter are recorded by a pool observer in both modes.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
import weakref
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from .pool import PooledPg
from .registry import Registry
from .stats import PoolStats

__all__ = ["BUCKETS", "PrometheusInstrumentation", "instrument"]

POOL = "db_client_connection_pool_name"
STATE = "db_client_connection_state"
#: Histogram buckets in seconds (those pgregistry.otel advises).
BUCKETS: tuple[float, ...] = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 10.0, float("inf"))

# name, help, the stats key (None: the idle/used pair), reported when 0
_SIZES: tuple[tuple[str, str, str | None, bool], ...] = (
    ("db_client_connection_count", "Connections in the state of the state label", None, True),
    ("db_client_connection_idle_max", "Most idle connections kept (maxcached)", "maxcached", False),
    (
        "db_client_connection_idle_min",
        "Idle connections kept at least (mincached)",
        "mincached",
        True,
    ),
    ("db_client_connection_max", "Most open connections (maxconnections)", "maxconnections", False),
    ("db_client_connection_pending_requests", "Callers waiting for a connection", "waiting", True),
)


def _pool_stats(registry: Registry) -> Iterator[PoolStats]:
    stats = registry.stats()
    yield from stats["pools"].values()
    for group in stats["tenants"].values():
        yield from group.values()


def _samples(stats: PoolStats) -> Iterator[tuple[str, dict[str, str], float]]:
    """(metric, labels, value) of one pool's sizes; a limit of 0 (none) is not reported."""
    name = stats["name"]
    for metric, _, key, report_zero in _SIZES:
        if key is None:
            yield metric, {POOL: name, STATE: "idle"}, stats["idle"]
            yield metric, {POOL: name, STATE: "used"}, stats["in_use"]
            continue
        value = stats[key]  # type: ignore[literal-required]
        if value or report_zero:
            yield metric, {POOL: name}, value


class _SizeCollector(Collector):
    """One process: the sizes, read from the registry at scrape time."""

    def __init__(self, registry: Registry) -> None:
        self._registry = weakref.ref(registry)

    def collect(self) -> Iterable[GaugeMetricFamily]:
        registry = self._registry()
        families = {
            metric: GaugeMetricFamily(metric, text, labels=[POOL, STATE] if key is None else [POOL])
            for metric, text, key, _ in _SIZES
        }
        if registry is not None and not registry.closed:
            for stats in _pool_stats(registry):
                for metric, labels, value in _samples(stats):
                    families[metric].add_metric(list(labels.values()), value)
        return list(families.values())


class _Observer:
    """Records one pool's events (see :class:`~pgregistry.stats.PoolObserver`)."""

    __slots__ = ("_create", "_instrumentation", "_timeouts", "_use", "_wait")

    def __init__(self, instrumentation: PrometheusInstrumentation, pool: PooledPg) -> None:
        self._instrumentation = instrumentation
        self._create = instrumentation.create_time.labels(pool.name)
        self._wait = instrumentation.wait_time.labels(pool.name)
        self._use = instrumentation.use_time.labels(pool.name)
        self._timeouts = instrumentation.timeouts.labels(pool.name)

    def on_connect(self, seconds: float) -> None:
        self._create.observe(seconds)
        self._instrumentation.refresh_soon()

    def on_checkout(self, waited: float) -> None:
        self._wait.observe(waited)
        self._instrumentation.refresh_soon()

    def on_checkin(self, used: float) -> None:
        self._use.observe(used)
        self._instrumentation.refresh_soon()

    def on_timeout(self) -> None:
        self._timeouts.inc()


class PrometheusInstrumentation:
    """What :func:`instrument` returns; :meth:`uninstrument` stops it."""

    def __init__(
        self,
        registry: Registry,
        prometheus_registry: CollectorRegistry,
        *,
        multiprocess: bool,
        refresh: float,
    ) -> None:
        self.registry = registry
        self.multiprocess = multiprocess
        self._prometheus = prometheus_registry
        self._refresh = refresh
        self._refreshed = 0.0
        self._active = True
        self._stop = threading.Event()
        self._gauges: dict[str, Gauge] = {}
        self._collector: _SizeCollector | None = None
        self._seen: set[tuple[str, tuple[str, ...]]] = set()
        labels = [POOL]
        self.create_time = Histogram(
            "db_client_connection_create_time_seconds",
            "The time it took to create a new connection",
            labels, registry=prometheus_registry, buckets=BUCKETS,
        )  # fmt: skip
        self.wait_time = Histogram(
            "db_client_connection_wait_time_seconds",
            "The time it took to obtain an open connection from the pool",
            labels, registry=prometheus_registry, buckets=BUCKETS,
        )  # fmt: skip
        self.use_time = Histogram(
            "db_client_connection_use_time_seconds",
            "The time between borrowing a connection and returning it to the pool",
            labels, registry=prometheus_registry, buckets=BUCKETS,
        )  # fmt: skip
        self.timeouts = Counter(
            "db_client_connection_timeouts",
            "Checkouts that timed out waiting for a connection",
            labels, registry=prometheus_registry,
        )  # fmt: skip
        if multiprocess:
            for metric, text, key, _ in _SIZES:
                self._gauges[metric] = Gauge(
                    metric, text, [POOL, STATE] if key is None else [POOL],
                    registry=prometheus_registry, multiprocess_mode="livesum",
                )  # fmt: skip
            self._thread = threading.Thread(
                target=self._refresher, name="pgregistry-prometheus", daemon=True
            )
            self._thread.start()
        else:
            self._collector = _SizeCollector(registry)
            prometheus_registry.register(self._collector)
        registry.observe(self._observer)

    def _observer(self, pool: PooledPg) -> _Observer | None:
        return _Observer(self, pool) if self._active else None

    def refresh_soon(self) -> None:
        """Write the size gauges now if the last write is older than ``refresh`` seconds."""
        if self.multiprocess and time.monotonic() - self._refreshed >= self._refresh:
            self.refresh()

    def refresh(self) -> None:
        """Write every pool's sizes into the gauges (multiprocess mode; a no-op otherwise)."""
        if not self.multiprocess or not self._active:
            return
        self._refreshed = time.monotonic()
        seen: set[tuple[str, tuple[str, ...]]] = set()
        if not self.registry.closed:
            for stats in _pool_stats(self.registry):
                for metric, labels, value in _samples(stats):
                    key = tuple(labels.values())
                    self._gauges[metric].labels(*key).set(value)
                    seen.add((metric, key))
        for metric, key in self._seen - seen:  # pools closed since: drop their series
            self._gauges[metric].remove(*key)
        self._seen = seen

    def _refresher(self) -> None:
        while not self._stop.wait(self._refresh):
            with contextlib.suppress(Exception):  # never let the thread die: next round again
                self.refresh()

    def uninstrument(self) -> None:
        """Stop: pools drop their observer; the metrics leave the Prometheus registry."""
        if not self._active:
            return
        self._active = False
        self._stop.set()
        self.registry.unobserve(self._observer)
        collectors: list[Any] = [self.create_time, self.wait_time, self.use_time, self.timeouts]
        collectors += list(self._gauges.values())
        if self._collector is not None:
            collectors.append(self._collector)
        for collector in collectors:
            self._prometheus.unregister(collector)


def instrument(
    registry: Registry | None = None,
    prometheus_registry: CollectorRegistry | None = None,
    *,
    multiprocess: bool | None = None,
    refresh: float = 1.0,
) -> PrometheusInstrumentation:
    """Export every pool of ``registry`` (default: the process-wide one) to Prometheus.

    ``prometheus_registry``: where the metrics are registered (default:
    ``prometheus_client.REGISTRY``). ``multiprocess``: default, whether
    ``PROMETHEUS_MULTIPROC_DIR`` is set. ``refresh``: seconds between writes of the size
    gauges in multiprocess mode.
    """
    if registry is None:
        from . import default_registry

        registry = default_registry
    if multiprocess is None:
        multiprocess = bool(os.environ.get("PROMETHEUS_MULTIPROC_DIR"))
    return PrometheusInstrumentation(
        registry,
        REGISTRY if prometheus_registry is None else prometheus_registry,
        multiprocess=multiprocess,
        refresh=refresh,
    )
