"""Billing runs: payloads, the deterministic plan, charging, keys and the run routes' logic."""
