"""Real-name verification: flows, consents and erasure (domain, store, service)."""
