"""Reporting: incidents, reports to the authorities, the regulator feed and the audit ledger (Art. 10, 12-14, 17)."""
