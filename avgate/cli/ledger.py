"""`avgate ledger ...`: tree heads, proofs, offline checks, verification, pruning."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    ledger = sub.add_parser("ledger", help="the audit ledger: heads, proofs, verification")
    ledger.set_defaults(func=lambda args: ledger.print_help() or 2)
