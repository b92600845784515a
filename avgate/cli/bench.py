"""`avgate bench ...`: benchmarks that compare side by side in one run."""

from __future__ import annotations

import argparse
import sys


def _ledger(args: argparse.Namespace) -> int:
    from avgate.bench.ledger import main

    command = "avgate bench ledger " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "avgate bench ledger"
    return main(args.entries, args.proof_size, command.strip(), args.head_every)


def _dispatcher(args: argparse.Namespace) -> int:
    from avgate.bench.dispatcher import main

    command = "avgate bench dispatcher " + " ".join(sys.argv[3:]) if len(sys.argv) > 3 else "avgate bench dispatcher"
    return main(args.events, args.failure_rate, command.strip())


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    bench = sub.add_parser("bench", help="benchmarks (figures go to docs/BENCHMARKS.md)")
    which = bench.add_subparsers(dest="bench_command", required=True)
    ledger = which.add_parser(
        "ledger",
        help="append throughput vs plain insert, commit→head latency, verification rate, proof latency",
        description="Runs against DATABASE_URL's server (a fresh database, dropped after) or an embedded PostgreSQL.",
    )
    ledger.add_argument("--entries", type=int, default=20_000, help="appends per writer count and stack")
    ledger.add_argument("--proof-size", type=int, default=1_000_000, help="ledger size for verification and proofs")
    ledger.add_argument(
        "--head-every",
        type=int,
        default=None,
        help="entries per signed head in the verified ledger (default: production density, one head per "
        "sequencer batch at 5,000 appends/s)",
    )
    ledger.set_defaults(func=_ledger)
    dispatcher = which.add_parser(
        "dispatcher",
        help="outbox delivery rate to a local HTTP endpoint with injected 503s: keep-alive vs not, 1 vs 2 replicas",
        description="Runs against DATABASE_URL's server (a fresh database, dropped after) or an embedded PostgreSQL.",
    )
    dispatcher.add_argument("--events", type=int, default=10_000, help="reports delivered per configuration")
    dispatcher.add_argument("--failure-rate", type=float, default=0.01, help="share of requests answered 503")
    dispatcher.set_defaults(func=_dispatcher)
