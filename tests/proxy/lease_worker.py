"""A stand-in for one Function App instance in the multi-process lease tests.

Run as ``python -m tests.proxy.lease_worker '<json spec>'``: its own storage client and its own
`LeaseLedger` (the proxy's ledger), reserving exactly as the proxy does (the reservation with its
in_flight idempotency record create). It prints "ready", waits for a line on stdin, works, and
prints one JSON line; in "hold" mode it then answers one command per stdin line.
"""

from __future__ import annotations

import json
import random
import sys
import threading
import time
from datetime import timedelta
from typing import Any

from bench.common import reserve_ops, utcnow
from core.errors import SpendgateError
from core.settings import Settings
from core.storage import table_service_from_connection_string
from proxy.leases import LeaseLedger
from proxy.store import Conflict, LedgerStore, idem_row_key


def reserve_like_proxy(ledger: LeaseLedger, store: LedgerStore, key_id: str, idem_key: str, amount: int,
                       day: str) -> str:
    """One reservation, with the proxy's answers: admitted, duplicate, revoked or the refusal's code."""
    key = store.read_key(key_id)
    for _attempt in range(60):
        assert key is not None
        if key.status(utcnow()) != "active":
            return "revoked"
        try:
            ledger.reserve(key, amount, day, reserve_ops(key_id, idem_key, amount, day))
            return "admitted"
        except Conflict:
            if store.read_idem(key_id, idem_row_key(idem_key)) is not None:
                return "duplicate"
            key = store.read_key(key_id)
        except SpendgateError as err:
            return err.code
    return "gave_up"


def main(spec: dict[str, Any]) -> None:
    settings = Settings.from_mapping({"AzureWebJobsStorage": spec["conn"], "SPENDGATE_TABLE_PREFIX": spec["prefix"],
                                      "STRIPE_SECRET_KEY": "sk_test_x", "STRIPE_API_BASE": "http://127.0.0.1:9"})
    store = LedgerStore(table_service_from_connection_string(spec["conn"]), settings)
    ledger = LeaseLedger(store, ttl=timedelta(seconds=spec.get("ttl", 30)), reaper=False)
    fired: list[list[Any]] = []  # [percent, usage] for each alert threshold this instance committed
    ledger.on_threshold = lambda _key, binding, percents: fired.extend([p, binding.used] for p in percents)
    key_id, amount, day = spec["key_id"], spec["amount"], utcnow().date().isoformat()
    store.read_key(key_id)
    print("ready", flush=True)
    sys.stdin.readline()
    out: dict[str, Any] = {"owner": ledger.owner}
    if spec["mode"] == "race":  # every caller reserves until refused
        lock = threading.Lock()
        admitted: list[list[Any]] = []
        refusals: list[float] = []
        other: list[str] = []

        def caller(i: int) -> None:
            for seq in range(100_000):
                began = time.time()
                outcome = reserve_like_proxy(ledger, store, key_id, f"{spec['tag']}-{i}-{seq}", amount, day)
                with lock:
                    if outcome == "admitted":
                        admitted.append([f"{spec['tag']}-{i}-{seq}", began])
                    elif outcome == "spend_cap_exceeded":
                        refusals.append(time.time())
                        return
                    else:
                        other.append(outcome)
                        return

        threads = [threading.Thread(target=caller, args=(i,)) for i in range(spec.get("callers", 1))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        out.update(admitted=admitted, refusals=refusals, other=other, fired=fired)
    elif spec["mode"] == "keys":  # the same idempotency keys as every other worker, in its own order
        keys = list(spec["keys"])
        random.shuffle(keys)
        out["outcomes"] = {k: reserve_like_proxy(ledger, store, key_id, k, amount, day) for k in keys}
    elif spec["mode"] == "hold":  # reserve, keep the lease, then answer commands
        out["outcomes"] = [reserve_like_proxy(ledger, store, key_id, f"{spec['tag']}-held-{i}", amount, day)
                           for i in range(spec.get("count", 1))]
        known = store.read_key(key_id)  # the row as this instance knows it (KnownKeys would keep it)
        print(json.dumps(out), flush=True)
        for n, line in enumerate(sys.stdin):
            if line.strip() == "reserve":  # on the remembered row: only the ledger's If-Match can stop it
                assert known is not None
                try:
                    ledger.reserve(known, amount, day, reserve_ops(key_id, f"{spec['tag']}-cmd-{n}", amount, day))
                    outcome = "admitted"
                except Conflict:
                    fresh = store.read_key(key_id)
                    outcome = "revoked" if fresh is not None and fresh.status(utcnow()) == "revoked" else "conflict"
                except SpendgateError as err:
                    outcome = err.code
                print(json.dumps({"outcome": outcome}), flush=True)
        return
    ledger.close()
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main(json.loads(sys.argv[1]))
