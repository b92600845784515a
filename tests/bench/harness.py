"""What the gateway benchmarks share: TLS outside, where each process runs, and timed rounds.

- TLS outside: the benchmarks' stack serves its public listener over TLS
  (GATEWAY_TLS_CERT_FILE/KEY_FILE, a certificate of a CA made here for the
  outside), as production must; inside, `avgate run` runs mTLS already.
- Placement: how the goal of issue 11 is judged, the gateway alone on one
  core (`taskset -c 1`, every thread of its process) and the client, the
  services and PostgreSQL on the other (`taskset -c 0`); or every process
  on every core ("shared"), which is also reported.
- Rounds: the direct and the gateway path alternate in order, round by
  round, after a warm-up; a figure is the median of the rounds' ratios.
"""

from __future__ import annotations

import asyncio
import os
import pathlib
import statistics
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import grpc

from avgate.kernel.tls import generate_ca, issue_certificate
from tests.support import RunningStack

GATEWAY_CORE = 1
OTHERS_CORE = 0


@dataclass(frozen=True)
class OutsideTls:
    """The public listener's certificate, and the CA a client trusts it by."""

    ca_file: pathlib.Path
    settings: dict[str, str]

    def credentials(self) -> grpc.ChannelCredentials:
        return grpc.ssl_channel_credentials(root_certificates=self.ca_file.read_bytes())


def outside_tls(directory: pathlib.Path) -> OutsideTls:
    ca = generate_ca(directory, "outside-ca")
    server = issue_certificate(
        ca, directory, "gateway-outside", common_name="localhost", dns_names=("localhost",), ip_addresses=("127.0.0.1",)
    )
    return OutsideTls(
        ca.cert_file,
        {"GATEWAY_TLS_CERT_FILE": str(server.cert_file), "GATEWAY_TLS_KEY_FILE": str(server.key_file)},
    )


def gateway_channel(stack: RunningStack, tls: OutsideTls) -> grpc.aio.Channel:
    """An outside client's channel: TLS to the gateway's public listener."""
    return grpc.aio.secure_channel(stack.gateway, tls.credentials())


# Where the processes run.


def _children() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rpartition(")")[2].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    return children


def _tree(pid: int, children: dict[int, list[int]]) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        todo.extend(children.get(p, ()))
    return found


def _postgres() -> list[int]:
    pids = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if pathlib.Path(f"/proc/{entry}/comm").read_text().strip() == "postgres":
                    pids.append(int(entry))
            except OSError:
                continue
    return pids


def _pin(pid: int, cpus: set[int]) -> None:
    """Every thread of the process: `taskset -a -p`."""
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return
    for tid in tids:
        try:
            os.sched_setaffinity(int(tid), cpus)
        except OSError:
            continue  # the thread ended meanwhile, or a process not ours to move


def can_split() -> bool:
    return len(os.sched_getaffinity(0)) >= 2 and {GATEWAY_CORE, OTHERS_CORE} <= os.sched_getaffinity(0)


@contextmanager
def placement(stack: RunningStack, split: bool) -> Iterator[None]:
    """split: the gateway alone on GATEWAY_CORE, everything else (this client, the services, their
    children, PostgreSQL) on OTHERS_CORE. Not split: every process on every core. Restored afterwards."""
    every = set(os.sched_getaffinity(0)) | {GATEWAY_CORE, OTHERS_CORE}
    children = _children()
    gateway = set(_tree(int(stack.description["processes"]["gateway"]["pid"]), children))
    others = [p for p in _tree(stack.process.pid, children) if p not in gateway]
    others += [*_postgres(), os.getpid()]
    try:
        for pid in gateway:
            _pin(pid, {GATEWAY_CORE} if split else every)
        for pid in others:
            _pin(pid, {OTHERS_CORE} if split else every)
        yield
    finally:
        for pid in [*gateway, *others]:
            _pin(pid, every)


# Timed rounds.


@dataclass
class Sample:
    """One path's calls of one round: their count, wall time and latencies."""

    count: int = 0
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)

    @property
    def rate(self) -> float:
        return self.count / self.seconds


@dataclass
class Series:
    """One path's rounds."""

    rounds: list[Sample] = field(default_factory=list)

    @property
    def rate(self) -> float:
        """Over every round."""
        return sum(r.count for r in self.rounds) / sum(r.seconds for r in self.rounds)

    def percentile_ms(self, q: float) -> float:
        values = sorted(v for r in self.rounds for v in r.latencies)
        return values[min(len(values) - 1, int(q * len(values)))] * 1000


def median_ratio(gateway: Series, direct: Series) -> float:
    return statistics.median(g.rate / d.rate for g, d in zip(gateway.rounds, direct.rounds, strict=True))


async def closed_loop(call: Callable[[], Awaitable[object]], calls: int, in_flight: int) -> Sample:
    """`calls` calls, `in_flight` at a time, each timed."""
    sample = Sample(count=calls)
    remaining = calls

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            sample.latencies.append(time.perf_counter() - start)

    began = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(in_flight)))
    sample.seconds = time.perf_counter() - began
    return sample


async def alternating(
    paths: dict[str, Callable[[], Awaitable[Sample]]], rounds: int, warm_up: int = 1
) -> dict[str, Series]:
    """Each path `warm_up` times unrecorded, then `rounds` rounds, the order reversed every round."""
    names = list(paths)
    for _ in range(warm_up):
        for name in names:
            await paths[name]()
    series = {name: Series() for name in names}
    for n in range(rounds):
        for name in names if n % 2 == 0 else reversed(names):
            series[name].rounds.append(await paths[name]())
    return series
