"""activities of spendgate's function app (see docs/billing.md)."""
