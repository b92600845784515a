"""`avgate feed follow` pins the ledger's keys on first use (avgate.cli.feed_trust): runs are
played against a fake ledger whose published keys change between them."""

from __future__ import annotations

import pytest

from avgate.cli.feed_trust import FeedError, LedgerTrust
from avgate.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint

ORIGIN = "avgate.test/pins"


class FakeLedger:
    """Publishes whatever keys it is told to, and counts how often it was asked."""

    def __init__(self, *signers: NoteSigner):
        self.signers = list(signers)
        self.asked = 0

    async def published(self) -> list[str]:
        self.asked += 1
        return [s.vkey() for s in self.signers]


def head(signer: NoteSigner, size: int = 3) -> bytes:
    return sign_checkpoint(Checkpoint(origin=ORIGIN, size=size, root_hash=bytes(32), timestamp_ms=1), signer)


async def first_run(ledger: FakeLedger, note: bytes) -> list[str]:
    trust = LedgerTrust([], None, "state.json")
    await trust.open(note, ledger.published, "a tree head")
    assert trust.pinned is not None
    return trust.pinned


class TestPinnedOnFirstUse:
    async def test_the_first_run_pins_the_published_keys(self) -> None:
        genuine = NoteSigner.generate(ORIGIN)
        ledger = FakeLedger(genuine)
        assert await first_run(ledger, head(genuine)) == [genuine.vkey()]
        assert ledger.asked == 1

    async def test_a_later_run_trusts_the_pins_and_never_asks_the_log(self) -> None:
        genuine = NoteSigner.generate(ORIGIN)
        ledger = FakeLedger(genuine)
        pins = await first_run(ledger, head(genuine))
        trust = LedgerTrust([], pins, "state.json")
        checkpoint = await trust.open(head(genuine, 9), ledger.published, "a tree head")
        assert checkpoint.size == 9
        assert ledger.asked == 1

    async def test_a_head_by_a_newly_published_key_stops_the_client(self) -> None:
        genuine, impostor = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
        ledger = FakeLedger(genuine)
        pins = await first_run(ledger, head(genuine))
        ledger.signers = [impostor]  # the server now publishes another key, and signs with it
        trust = LedgerTrust([], pins, "state.json")
        with pytest.raises(FeedError) as caught:
            await trust.open(head(impostor, 9), ledger.published, "a tree head in the feed")
        message = str(caught.value)
        assert "does not verify" in message and "pinned in state.json" in message
        assert f"{impostor.key_hash:08x}" in message and f"{genuine.key_hash:08x}" in message
        assert "--vkey" in message
        assert trust.pinned == pins and ledger.asked == 1

    async def test_a_head_cosigned_by_an_unpinned_key_still_needs_a_pinned_signature(self) -> None:
        genuine, newcomer = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
        pins = await first_run(FakeLedger(genuine), head(genuine))
        checkpoint = Checkpoint(origin=ORIGIN, size=5, root_hash=bytes(32), timestamp_ms=1)
        trust = LedgerTrust([], pins, "state.json")
        await trust.open(sign_checkpoint(checkpoint, genuine, newcomer), FakeLedger().published, "a tree head")
        assert trust.pinned == pins  # a cosignature adds no key: only --vkey does
        with pytest.raises(FeedError):
            await trust.open(sign_checkpoint(checkpoint, newcomer), FakeLedger().published, "a tree head")

    async def test_vkey_accepts_a_rotated_key_and_replaces_the_pins(self) -> None:
        old, new = NoteSigner.generate(ORIGIN), NoteSigner.generate(ORIGIN)
        ledger = FakeLedger(old)
        pins = await first_run(ledger, head(old))
        ledger.signers = [new]
        trust = LedgerTrust([new.vkey()], pins, "state.json")
        assert (await trust.open(head(new, 9), ledger.published, "a tree head")).size == 9
        assert trust.pinned == [new.vkey()]
        assert ledger.asked == 1

    async def test_a_malformed_vkey_is_named(self) -> None:
        trust = LedgerTrust(["not-a-key"], None, "state.json")
        with pytest.raises(FeedError, match="--vkey"):
            await trust.open(head(NoteSigner.generate(ORIGIN)), FakeLedger().published, "a tree head")
