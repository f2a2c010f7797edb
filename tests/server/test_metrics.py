"""Metrics against the real libraries: OpenTelemetry's SDK (in-memory reader) and
prometheus_client (a real HTTP scrape, and real worker processes in multiprocess mode)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from prometheus_client import CollectorRegistry, generate_latest, start_http_server
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.parser import text_string_to_metric_families

import pgregistry.otel
import pgregistry.prometheus
from pgregistry import PoolTimeoutError, Registry

POOL = "db.client.connection.pool.name"
MakeRegistry = Callable[[dict[str, Any]], Registry]


def config(shared_kwargs: dict[str, Any], app_name: str) -> dict[str, Any]:
    target = {k: shared_kwargs[k] for k in ("host", "port", "dbname", "user")}
    return {
        "pools": {
            "app": {
                **target,
                "application_name": app_name,
                "maxconnections": 2,
                "blocking": True,
                "timeout": 0.2,
            },
        },
        "tenants": {
            "shop": {**target, "application_name": app_name + "_{tenant}", "maxconnections": 3},
        },
    }


def exercise(registry: Registry) -> None:
    """Two checkouts and a timeout on ``app``, one checkout of tenant pool ``shop.acme``."""
    pool = registry.get("app")
    first, second = pool.connection(), pool.connection()
    with pytest.raises(PoolTimeoutError):
        pool.connection()
    first.close()
    second.close()
    with registry.connection("shop", tenant="acme") as db:
        db.query("SELECT 1")


# -- OpenTelemetry ----------------------------------------------------------------------------


def otel_points(reader: InMemoryMetricReader) -> dict[str, list[Any]]:
    data = reader.get_metrics_data()
    points: dict[str, list[Any]] = {}
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                points.setdefault(metric.name, []).extend(metric.data.data_points)
                assert metric.unit in ("s", "{connection}", "{request}", "{timeout}"), metric
    return points


def test_otel_reports_the_semantic_convention_instruments_for_every_pool(
    make_registry: MakeRegistry, shared_kwargs: dict[str, Any], app_name: str
) -> None:
    registry = make_registry(config(shared_kwargs, app_name))
    reader = InMemoryMetricReader()
    handle = pgregistry.otel.instrument(registry, MeterProvider(metric_readers=[reader]))
    exercise(registry)
    points = otel_points(reader)

    counts = {
        (p.attributes[POOL], p.attributes["db.client.connection.state"]): p.value
        for p in points["db.client.connection.count"]
    }
    assert counts[("app", "idle")] == 2 and counts[("app", "used")] == 0
    assert counts[("shop.acme", "idle")] == 1  # a tenant pool built after instrument()
    maxima = {p.attributes[POOL]: p.value for p in points["db.client.connection.max"]}
    assert maxima == {"app": 2, "shop.acme": 3}
    timeouts = {p.attributes[POOL]: p.value for p in points["db.client.connection.timeouts"]}
    assert timeouts == {"app": 1}
    waits = {p.attributes[POOL]: p.count for p in points["db.client.connection.wait_time"]}
    assert waits == {"app": 2, "shop.acme": 1}
    uses = {p.attributes[POOL]: p.count for p in points["db.client.connection.use_time"]}
    assert uses == {"app": 2, "shop.acme": 1}
    creates = {p.attributes[POOL]: p.count for p in points["db.client.connection.create_time"]}
    assert creates == {"app": 2, "shop.acme": 1}
    assert "db.client.connection.pending_requests" in points
    assert "db.client.connection.idle.min" in points

    handle.uninstrument()
    registry.get("app").connection().close()
    after = otel_points(reader)
    waits_after = {p.attributes[POOL]: p.count for p in after["db.client.connection.wait_time"]}
    assert waits_after["app"] == 2  # not recorded once uninstrumented


def test_otel_never_reports_a_password(
    make_registry: MakeRegistry, shared_kwargs: dict[str, Any], app_name: str
) -> None:
    settings = config(shared_kwargs, app_name)
    settings["pools"]["app"]["password"] = "pgrt-s3cret-metric"
    registry = make_registry(settings)
    reader = InMemoryMetricReader()
    pgregistry.otel.instrument(registry, MeterProvider(metric_readers=[reader]))
    registry.get("app").connection().close()
    assert "pgrt-s3cret-metric" not in repr(reader.get_metrics_data())


# -- Prometheus: one process, scraped over HTTP -----------------------------------------------


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as answer:
        text = answer.read().decode()
    return parse(text)


def parse(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


def pool_label(name: str, **more: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted({"db_client_connection_pool_name": name, **more}.items()))


@pytest.fixture
def http_metrics() -> Iterator[tuple[CollectorRegistry, int]]:
    prometheus_registry = CollectorRegistry()
    port = free_port()
    server, thread = start_http_server(port, addr="127.0.0.1", registry=prometheus_registry)
    try:
        yield prometheus_registry, port
    finally:
        server.shutdown()
        thread.join(5)


def test_prometheus_scrape_shows_sizes_events_and_tenant_pools(
    make_registry: MakeRegistry,
    shared_kwargs: dict[str, Any],
    app_name: str,
    http_metrics: tuple[CollectorRegistry, int],
) -> None:
    prometheus_registry, port = http_metrics
    registry = make_registry(config(shared_kwargs, app_name))
    handle = pgregistry.prometheus.instrument(registry, prometheus_registry, multiprocess=False)
    exercise(registry)
    held = registry.get("app").connection()
    samples = scrape(port)
    held.close()

    count = "db_client_connection_count"
    assert samples[(count, pool_label("app", db_client_connection_state="used"))] == 1
    assert samples[(count, pool_label("app", db_client_connection_state="idle"))] == 1
    assert samples[(count, pool_label("shop.acme", db_client_connection_state="idle"))] == 1
    assert samples[("db_client_connection_max", pool_label("app"))] == 2
    assert samples[("db_client_connection_timeouts_total", pool_label("app"))] == 1
    wait_count = "db_client_connection_wait_time_seconds_count"
    assert samples[(wait_count, pool_label("app"))] == 3
    assert samples[("db_client_connection_create_time_seconds_count", pool_label("app"))] == 2
    assert samples[("db_client_connection_use_time_seconds_count", pool_label("shop.acme"))] == 1
    handle.uninstrument()
    assert not [key for key in scrape(port) if key[0].startswith("db_client_connection")]


# -- Prometheus: multiprocess mode, as under gunicorn -------------------------------------------

WORKER = textwrap.dedent(
    """
    import sys
    import pgregistry.prometheus
    from pgregistry import Registry
    from pgregistry.config import settings_from_mapping

    target = dict(host=sys.argv[1], port=int(sys.argv[2]), dbname=sys.argv[3], user=sys.argv[4])
    registry = Registry(settings_from_mapping(
        {"pools": {"app": {**target, "application_name": sys.argv[5], "maxconnections": 4}}}))
    handle = pgregistry.prometheus.instrument(registry)
    assert handle.multiprocess
    held = [registry.get("app").connection() for _ in range(int(sys.argv[6]))]
    handle.refresh()
    print("ready", flush=True)
    sys.stdin.readline()  # stay alive (livesum gauges count live workers) until told
    for db in held:
        db.close()
    registry.close()
    """
)


def test_prometheus_multiprocess_mode_sums_real_worker_processes(
    shared_kwargs: dict[str, Any], app_name: str, tmp_path: Path
) -> None:
    directory = tmp_path / "prom"
    directory.mkdir()
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(directory)}
    args = [shared_kwargs[k] for k in ("host", "port", "dbname", "user")]
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, *map(str, args), app_name, str(held)],
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for held in (1, 2)
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            line: list[str] = []

            def read_line(w: subprocess.Popen[str] = worker, out: list[str] = line) -> None:
                assert w.stdout is not None
                out.append(w.stdout.readline())

            reader = threading.Thread(target=read_line)
            reader.start()
            reader.join(30)
            assert line == ["ready\n"], "a worker did not start"
        collector_registry = CollectorRegistry()
        MultiProcessCollector(collector_registry, path=str(directory))  # type: ignore[no-untyped-call]
        samples = parse(generate_latest(collector_registry).decode())
    finally:
        for worker in workers:
            if worker.stdin is not None:
                worker.stdin.write("\n")
                worker.stdin.close()
        for worker in workers:
            worker.wait(30)
    used = ("db_client_connection_count", pool_label("app", db_client_connection_state="used"))
    assert samples[used] == 3  # 1 + 2, summed over the live workers
    assert samples[("db_client_connection_max", pool_label("app"))] == 8
    assert samples[("db_client_connection_wait_time_seconds_count", pool_label("app"))] == 3
    assert all(worker.returncode == 0 for worker in workers)


def test_otel_and_prometheus_observe_one_registry_side_by_side(
    make_registry: MakeRegistry, shared_kwargs: dict[str, Any], app_name: str
) -> None:
    registry = make_registry(config(shared_kwargs, app_name))
    reader = InMemoryMetricReader()
    otel = pgregistry.otel.instrument(registry, MeterProvider(metric_readers=[reader]))
    prometheus_registry = CollectorRegistry()
    prom = pgregistry.prometheus.instrument(registry, prometheus_registry, multiprocess=False)
    registry.get("app").connection().close()
    samples = parse(generate_latest(prometheus_registry).decode())
    assert samples[("db_client_connection_wait_time_seconds_count", pool_label("app"))] == 1
    waits = {
        p.attributes[POOL]: p.count for p in otel_points(reader)["db.client.connection.wait_time"]
    }
    assert waits == {"app": 1}
    otel.uninstrument()  # the other one keeps observing
    registry.get("app").connection().close()
    samples = parse(generate_latest(prometheus_registry).decode())
    assert samples[("db_client_connection_wait_time_seconds_count", pool_label("app"))] == 2
    prom.uninstrument()
