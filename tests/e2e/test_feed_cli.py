"""`avgate feed follow` against the running stack, as a regulator runs it: it
writes what the feed carries, resumes exactly from its state file, verifies
every tree head and proves each new head consistent with the one before."""

from __future__ import annotations

import datetime
import json
import os
import pathlib
import subprocess
import sys
import time
import uuid

import grpc
import pytest

from avgate.common.v1 import common_pb2
from avgate.ledger.checkpoint import NoteSigner
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import REPO
from tests.support import RunningStack

pytestmark = pytest.mark.e2e


def create_incidents(stack: RunningStack, n: int) -> list[str]:
    key = stack.description["development_api_keys"]["provider"]
    ids = []
    with grpc.insecure_channel(stack.gateway) as channel:
        stub = reporting_pb2_grpc.IncidentServiceStub(channel)
        for _ in range(n):
            item = reporting_pb2.IncidentInput(
                external_id=f"feed-{uuid.uuid4().hex[:8]}",
                source=reporting_pb2.INCIDENT_SOURCE_SCREENING,
                category=reporting_pb2.INCIDENT_CATEGORY_RUMOR,
                legal_basis=[common_pb2.LegalBasis(instrument="NAVIS-2019", article="13")],
                facts="A refuted claim was repeated in a video; the video was taken down.",
                region_code="110105",
            )
            created = stub.CreateIncident(
                reporting_pb2.CreateIncidentRequest(incident=item),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
            ids.append(created.incident.incident_id)
    return ids


def latest_size(stack: RunningStack) -> int:
    key = stack.description["development_api_keys"]["regulator"]
    with grpc.insecure_channel(stack.gateway) as channel:
        head = reporting_pb2_grpc.AuditLedgerServiceStub(channel).GetLatestTreeHead(
            reporting_pb2.GetLatestTreeHeadRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
        )
    return int(head.tree_head.tree_size)


def wait_for_head_beyond(stack: RunningStack, size: int) -> int:
    deadline = time.monotonic() + 30
    while (current := latest_size(stack)) <= size:
        assert time.monotonic() < deadline, f"no tree head beyond size {size}"
        time.sleep(0.2)
    return current


def follow(
    stack: RunningStack, state: pathlib.Path, out: pathlib.Path, *extra: str
) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AVGATE_API_KEY=stack.description["development_api_keys"]["regulator"])
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "avgate.cli.main",
            "feed",
            "follow",
            "--target",
            stack.gateway,
            "--state-file",
            str(state),
            "--out",
            str(out),
            "--heartbeat",
            "1",
            "--exit-when-idle",
            *extra,
        ],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


def created_ids(written: list[dict]) -> list[str]:  # type: ignore[type-arg]
    """Incidents in the order the feed first recorded them (updates, e.g. delivery status, come as their own items)."""
    return [x["incident"]["incidentId"] for x in written if x["kind"] == "incident_created"]


def lines(path: pathlib.Path) -> list[dict]:  # type: ignore[type-arg]
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_follow_writes_resumes_exactly_and_verifies_heads(running: RunningStack, tmp_path: pathlib.Path) -> None:
    # Only this test's incidents: the module's other tests share the stack and may have run first.
    since = datetime.datetime.now(datetime.UTC).isoformat()
    first = create_incidents(running, 3)
    size = wait_for_head_beyond(running, 0)
    state, out = tmp_path / "feed.state", tmp_path / "feed.jsonl"

    done = follow(running, state, out, "--since", since)
    assert done.returncode == 0, done.stderr
    written = lines(out)
    assert created_ids(written) == first
    heads = [x["tree_head"] for x in written if "tree_head" in x]
    assert heads and all(h["verified"] for h in heads)
    assert json.loads(state.read_text())["cursor"] == written[-1]["cursor"]

    second = create_incidents(running, 2)
    wait_for_head_beyond(running, max(size, heads[-1]["tree_size"]))
    done = follow(running, state, out, "--since", since)
    assert done.returncode == 0, done.stderr
    resumed = lines(out)[len(written) :]
    assert created_ids(resumed) == second
    cursors = [x["cursor"] for x in written + resumed]
    assert len(cursors) == len(set(cursors)), "nothing is written twice"
    new_heads = [x["tree_head"] for x in resumed if "tree_head" in x]
    assert new_heads, "a head signed after the first run reaches the resumed client"
    assert new_heads[0]["consistent_with_size"] == heads[-1]["tree_size"]


def test_a_head_signed_by_another_key_stops_the_client(running: RunningStack, tmp_path: pathlib.Path) -> None:
    create_incidents(running, 1)
    wait_for_head_beyond(running, 0)
    impostor = NoteSigner.generate("impostor.example/ledger").vkey()
    state, out = tmp_path / "feed.state", tmp_path / "feed.jsonl"
    done = follow(running, state, out, "--vkey", impostor)
    assert done.returncode == 1
    assert "does not verify" in done.stderr
    written = lines(out) if out.exists() else []
    assert [x for x in written if "tree_head" in x] == [], "an unverified head is never written"


def test_keys_pinned_on_first_use_refuse_a_log_that_now_signs_with_another_key(
    running: RunningStack, tmp_path: pathlib.Path
) -> None:
    since = datetime.datetime.now(datetime.UTC).isoformat()
    create_incidents(running, 1)
    wait_for_head_beyond(running, 0)
    state, out = tmp_path / "feed.state", tmp_path / "feed.jsonl"
    genuine = ledger_vkey(running)
    done = follow(running, state, out, "--since", since)
    assert done.returncode == 0, done.stderr
    assert json.loads(state.read_text())["vkeys"] == [genuine], "the first run pins what the log publishes"

    # The next run meets a log whose key is not the one pinned (a swapped or compromised server
    # publishing its own key): here the pin is another key of the same name, as if the first run
    # had met the genuine log and this stack were the impostor.
    pinned = NoteSigner.generate(genuine.split("+")[0]).vkey()
    saved = json.loads(state.read_text())
    state.write_text(json.dumps({**saved, "vkeys": [pinned]}))
    before = len(lines(out))
    size = wait_for_head_beyond(running, 0)
    create_incidents(running, 1)
    wait_for_head_beyond(running, size)
    done = follow(running, state, out, "--since", since)
    assert done.returncode == 1
    assert "not by a key pinned in" in done.stderr and "--vkey" in done.stderr, done.stderr
    assert [x for x in lines(out)[before:] if "tree_head" in x] == [], "an unpinned head is never written"
    assert json.loads(state.read_text())["vkeys"] == [pinned], "the server cannot change the pins"

    done = follow(running, state, out, "--since", since, "--vkey", genuine)
    assert done.returncode == 0, done.stderr
    assert json.loads(state.read_text())["vkeys"] == [genuine], "--vkey replaces the pins"


def feed_command(stack: RunningStack, *args: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, AVGATE_API_KEY=stack.description["development_api_keys"]["regulator"])
    return subprocess.run(
        [sys.executable, "-m", "avgate.cli.main", "feed", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )


def ledger_vkey(stack: RunningStack) -> str:
    key = stack.description["development_api_keys"]["regulator"]
    with grpc.insecure_channel(stack.gateway) as channel:
        reply = reporting_pb2_grpc.AuditLedgerServiceStub(channel).ListSigningKeys(
            reporting_pb2.ListSigningKeysRequest(), metadata=(("authorization", f"Bearer {key}"),), timeout=10
        )
    return str(reply.keys[0].verifier_key)


def test_export_fetches_a_bundle_that_verifies_online_and_offline_and_catches_tampering(
    running: RunningStack, tmp_path: pathlib.Path
) -> None:
    created = create_incidents(running, 2)
    now = datetime.datetime.now(datetime.UTC)
    window = [
        "--since",
        (now - datetime.timedelta(hours=1)).isoformat(),
        "--until",
        (now + datetime.timedelta(hours=1)).isoformat(),
    ]
    reporting_key = str(running.state_dir / "keys" / "reporting.pub")
    bundle = tmp_path / "bundle"
    done = feed_command(
        running, "export", "--target", running.gateway, *window, "--out", str(bundle), "--reporting-key", reporting_key
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["manifest_signature"] == "verified" and result["checkpoint_signature"] == "verified"
    assert result["export_ledger_entry"]["leaf_index"] < result["tree_size"]
    exported = [json.loads(line)["incident_id"] for line in (bundle / "incidents.jsonl").read_text().splitlines()]
    assert set(created) <= set(exported)

    vkey = ledger_vkey(running)
    offline = feed_command(running, "verify-export", str(bundle), "--reporting-key", reporting_key, "--vkey", vkey)
    assert offline.returncode == 0, offline.stderr

    forged_key = feed_command(
        running,
        "verify-export",
        str(bundle),
        "--reporting-key",
        str(running.state_dir / "keys" / "gateway.pub"),
        "--vkey",
        vkey,
    )
    assert forged_key.returncode == 1 and "signature" in forged_key.stderr

    lines = (bundle / "incidents.jsonl").read_text().splitlines()
    (bundle / "incidents.jsonl").write_text("\n".join([lines[0].replace("NAVIS", "NAVlS"), *lines[1:]]) + "\n")
    tampered = feed_command(running, "verify-export", str(bundle), "--reporting-key", reporting_key, "--vkey", vkey)
    assert tampered.returncode == 1 and "incidents.jsonl" in tampered.stderr
