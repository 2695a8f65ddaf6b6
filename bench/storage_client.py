"""Client CPU per Table Storage call: azure-core's default transport vs spendgate's `StorageTransport`.

Run: ``python -m bench.storage_client`` (or ``make bench-storage``). Starts Azurite, then for
each transport times the calls the proxy and devhost's durable engine make on the hot path
(a point read, an upsert, a partition query, a 2-operation transaction), one at a time on one
thread, and prints the CPU time this process spent per call (`time.thread_time`, so waiting
for Azurite does not count) and the wall time. The SDK, the azure-core pipeline and the
request are the same on both sides; only the transport under the pipeline differs.
Ends with ``client_cpu_ratio=<default ÷ StorageTransport, summed over the four calls>``.
"""

from __future__ import annotations

import argparse
import time
import uuid
from collections.abc import Callable
from typing import Any

from azure.core.pipeline.transport import RequestsTransport
from azure.data.tables import TableClient, TableServiceClient

from core.storage import StorageTransport, submit_transaction
from devhost.services import start_azurite


def calls(table: TableClient) -> dict[str, Callable[[], Any]]:
    pk = uuid.uuid4().hex
    table.upsert_entity({"PartitionKey": pk, "RowKey": "key", "cap": 50000, "spent": 0, "label": "x" * 100})
    table.upsert_entity({"PartitionKey": pk, "RowKey": "idem", "state": "completed"})
    return {
        "point read": lambda: table.get_entity(pk, "key"),
        "upsert": lambda: table.upsert_entity({"PartitionKey": pk, "RowKey": "up", "n": 1}),
        "partition query": lambda: list(table.query_entities(f"PartitionKey eq '{pk}'")),
        "2-op transaction": lambda: submit_transaction(table, [
            ("upsert", {"PartitionKey": pk, "RowKey": "t1", "n": 1}),
            ("upsert", {"PartitionKey": pk, "RowKey": "t2", "n": 1}),
        ]),
    }


def measure(fn: Callable[[], Any], n: int) -> tuple[float, float]:
    """(CPU ms, wall ms) per call of `fn`, after a warm-up."""
    for _ in range(min(50, n)):
        fn()
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(n):
        fn()
    return (time.thread_time() - cpu) / n * 1000, (time.perf_counter() - wall) / n * 1000


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=1000, help="calls of each kind per transport")
    args = parser.parse_args(argv)
    azurite = start_azurite()
    try:
        conn = azurite.extra["connection_string"]
        name = f"bench{uuid.uuid4().hex[:8]}"
        TableServiceClient.from_connection_string(conn).create_table(name)
        transports = {"azure-core default (requests)": RequestsTransport, "spendgate StorageTransport": StorageTransport}
        cpu_sums: dict[str, float] = {}
        print(f"{'transport':32s} {'call':18s} {'CPU ms':>8s} {'wall ms':>8s}")
        for label, transport in transports.items():
            service = TableServiceClient.from_connection_string(conn, transport=transport())
            total = 0.0
            for call, fn in calls(service.get_table_client(name)).items():
                cpu, wall = measure(fn, args.calls)
                total += cpu
                print(f"{label:32s} {call:18s} {cpu:8.3f} {wall:8.3f}", flush=True)
            cpu_sums[label] = total
        default, ours = cpu_sums.values()
        print()
        print(f"client CPU for the four calls: default {default:.2f} ms, StorageTransport {ours:.2f} ms")
        print(f"client_cpu_ratio={default / ours:.2f}")
    finally:
        azurite.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
