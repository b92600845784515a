"""Reporting's side of the audit ledger: the sequencer that integrates and
signs, the store that serves heads, proofs and entries, and the servicer."""
