"""The governance proxy: vault keys, the spend ledger, exactly-once forwarding, audit."""
