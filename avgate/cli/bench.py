"""`avgate bench ...`: benchmarks that compare side by side in one run."""

from __future__ import annotations

import argparse


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks (figures go to docs/BENCHMARKS.md)")
    bench.set_defaults(func=lambda args: bench.print_help() or 2)
