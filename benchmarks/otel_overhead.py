"""Checkout+checkin CPU cost with and without OpenTelemetry instrumentation, same run.

    python benchmarks/otel_overhead.py [--dsn "host=127.0.0.1 dbname=test user=root"]

Interleaves rounds of the plain and the instrumented pool (an SDK MeterProvider with an
in-memory reader, as an application would have) and prints the medians and their ratio.
"""

from __future__ import annotations

import argparse
import statistics
import time

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader

import pgregistry.otel
from pgregistry import Registry
from pgregistry.config import settings_from_mapping


def per_op(pool_get: object, rounds: int, ops: int) -> list[float]:
    """Thread CPU nanoseconds per checkout+checkin, one figure per round."""
    connection = pool_get.connection  # type: ignore[attr-defined]
    figures = []
    for _ in range(rounds):
        start = time.thread_time_ns()
        for _ in range(ops):
            connection().close()
        figures.append((time.thread_time_ns() - start) / ops)
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dsn", default="host=127.0.0.1 port=5432 dbname=test user=root")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--ops", type=int, default=20000)
    args = parser.parse_args()
    pools = {"plain": {"conninfo": args.dsn}, "traced": {"conninfo": args.dsn}}
    with (
        Registry(settings_from_mapping({"pools": pools})) as plain_reg,
        Registry(settings_from_mapping({"pools": pools})) as traced_reg,
    ):
        pgregistry.otel.instrument(
            traced_reg, MeterProvider(metric_readers=[InMemoryMetricReader()])
        )
        plain, traced = plain_reg.get("plain"), traced_reg.get("traced")
        plain.connection().close()
        traced.connection().close()
        a: list[float] = []
        b: list[float] = []
        for _ in range(args.rounds):
            a += per_op(plain, 1, args.ops)
            b += per_op(traced, 1, args.ops)
    ma, mb = statistics.median(a), statistics.median(b)
    print(f"checkout+checkin, plain:        {ma / 1000:.2f} µs (min {min(a) / 1000:.2f})")
    print(f"checkout+checkin, instrumented: {mb / 1000:.2f} µs (min {min(b) / 1000:.2f})")
    print(f"ratio instrumented/plain: {mb / ma:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
