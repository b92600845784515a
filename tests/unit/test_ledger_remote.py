"""check_extends: the regulator's offline check that today's log extends a saved head."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence

import pytest

from avgate.ledger.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from avgate.ledger.merkle import CompactRange, NodeId, build_consistency_proof, leaf_hash, root_from_leaf_hashes
from avgate.ledger.remote import (
    REASON_FORK,
    REASON_ORIGIN,
    REASON_PROOF,
    REASON_SHRUNK,
    REASON_SIGNATURE,
    check_extends,
    rfc3339_ms,
)

ORIGIN = "avgate.test/ledger"


def leaves(n: int, tag: str = "entry") -> list[bytes]:
    return [leaf_hash(f'{{"{tag}":{i}}}'.encode()) for i in range(n)]


def node_store(hashes: Sequence[bytes]) -> dict[NodeId, bytes]:
    """Every perfect node of the tree of these leaf hashes, as a sequencer would store them."""
    store: dict[NodeId, bytes] = {(0, i): h for i, h in enumerate(hashes)}
    cr = CompactRange()
    for level, index, h in cr.extend(hashes):
        store[(level, index)] = h
    return store


def proof(hashes: Sequence[bytes], size1: int, size2: int) -> list[bytes]:
    store = node_store(hashes[:size2])

    def fetch(ids: list[NodeId]) -> Mapping[NodeId, bytes]:
        return {nid: store[nid] for nid in ids}

    return build_consistency_proof(size1, size2, fetch)


def head(signer: NoteSigner, hashes: Sequence[bytes], size: int, *, origin: str = ORIGIN) -> bytes:
    checkpoint = Checkpoint(origin, size, root_from_leaf_hashes(hashes[:size]), timestamp_ms=1_700_000_000_000 + size)
    return sign_checkpoint(checkpoint, signer)


@pytest.fixture(scope="module")
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def test_compact_range_and_node_store_agree() -> None:
    hashes = leaves(13)
    cr = CompactRange()
    cr.extend_quiet(hashes)
    assert cr.root() == root_from_leaf_hashes(hashes)


@pytest.mark.parametrize(("size1", "size2"), [(1, 2), (3, 7), (4, 8), (5, 13), (8, 9), (6, 6), (13, 13), (1, 100)])
def test_a_log_that_grew_extends_the_saved_head(signer: NoteSigner, size1: int, size2: int) -> None:
    hashes = leaves(size2)
    result = check_extends(
        head(signer, hashes, size1), head(signer, hashes, size2), proof(hashes, size1, size2), [signer.verifier()]
    )
    assert result.ok, result.detail
    assert (result.saved_size, result.latest_size) == (size1, size2)
    assert result.reason is None
    assert result.message() == f"the log at size {size2} extends your saved head at size {size1}"
    as_json = result.to_json()
    assert as_json["ok"] is True and as_json["latest"]["root_hash"] == root_from_leaf_hashes(hashes).hex()
    assert as_json["saved"]["timestamp"] == rfc3339_ms(1_700_000_000_000 + size1)


def test_a_saved_empty_tree_is_extended_by_any_log(signer: NoteSigner) -> None:
    hashes = leaves(5)
    assert check_extends(head(signer, hashes, 0), head(signer, hashes, 5), [], [signer.verifier()]).ok


@pytest.mark.parametrize("position", [0, 1, -1])
def test_a_tampered_proof_is_refused(signer: NoteSigner, position: int) -> None:
    hashes = leaves(13)
    path = proof(hashes, 5, 13)
    path[position] = bytes(b ^ 0xFF for b in path[position][:1]) + path[position][1:]
    result = check_extends(head(signer, hashes, 5), head(signer, hashes, 13), path, [signer.verifier()])
    assert not result.ok
    assert result.reason == REASON_PROOF
    assert "does NOT extend" in result.message() and "consistency proof fails" in result.message()


def test_a_truncated_or_padded_proof_is_refused(signer: NoteSigner) -> None:
    hashes = leaves(13)
    path = proof(hashes, 5, 13)
    saved, latest = head(signer, hashes, 5), head(signer, hashes, 13)
    for bad in (path[:-1], [*path, path[0]], []):
        result = check_extends(saved, latest, bad, [signer.verifier()])
        assert not result.ok and result.reason == REASON_PROOF, bad


def test_a_forked_log_is_refused(signer: NoteSigner) -> None:
    """The operator rewrote everything after the saved size and re-signed: the saved root cannot be reached."""
    honest = leaves(13)
    forked = honest[:7] + leaves(6, tag="rewritten")
    saved = head(signer, honest, 9)  # saved while leaves 7 and 8 were still the honest ones
    latest = head(signer, forked, 13)
    result = check_extends(saved, latest, proof(forked, 9, 13), [signer.verifier()])
    assert not result.ok
    assert result.reason == REASON_PROOF
    # ...and the honest proof does not lead to the forked root either
    result = check_extends(saved, latest, proof(honest, 9, 13), [signer.verifier()])
    assert not result.ok and result.reason == REASON_PROOF


def test_a_log_that_shrank_is_refused(signer: NoteSigner) -> None:
    hashes = leaves(13)
    result = check_extends(head(signer, hashes, 13), head(signer, hashes, 10), [], [signer.verifier()])
    assert not result.ok
    assert result.reason == REASON_SHRUNK
    assert "smaller than the saved size 13" in result.message()


def test_a_head_signed_by_an_unknown_key_is_refused(signer: NoteSigner) -> None:
    hashes = leaves(13)
    impostor = NoteSigner.generate(ORIGIN)  # same name, different key
    proof_5_13 = proof(hashes, 5, 13)
    for saved, latest, which in (
        (head(signer, hashes, 5), head(impostor, hashes, 13), "latest"),
        (head(impostor, hashes, 5), head(signer, hashes, 13), "saved"),
    ):
        result = check_extends(saved, latest, proof_5_13, [signer.verifier()])
        assert not result.ok
        assert result.reason == REASON_SIGNATURE
        assert f"the {which} head's signature" in result.detail


def test_a_forged_signature_by_the_trusted_key_is_refused(signer: NoteSigner) -> None:
    hashes = leaves(13)
    latest = head(signer, hashes, 13)
    other_root = Checkpoint(ORIGIN, 13, hashlib.sha256(b"forged").digest(), timestamp_ms=1).body()
    forged = other_root + latest[latest.rfind(b"\n\n") + 1 :]  # the honest signature under another body
    result = check_extends(head(signer, hashes, 5), forged, proof(hashes, 5, 13), [signer.verifier()])
    assert not result.ok and result.reason == REASON_SIGNATURE
    assert "invalid signature" in result.detail


def test_a_pinned_key_list_is_the_only_trust(signer: NoteSigner) -> None:
    hashes = leaves(13)
    saved, latest = head(signer, hashes, 5), head(signer, hashes, 13)
    result = check_extends(saved, latest, proof(hashes, 5, 13), [NoteSigner.generate(ORIGIN).verifier()])
    assert not result.ok and result.reason == REASON_SIGNATURE
    result = check_extends(saved, latest, proof(hashes, 5, 13), [])
    assert not result.ok and result.reason == REASON_SIGNATURE


def test_a_rotated_key_still_verifies_old_heads_when_trusted(signer: NoteSigner) -> None:
    hashes = leaves(13)
    new_key = NoteSigner.generate(ORIGIN)
    result = check_extends(
        head(signer, hashes, 5),
        head(new_key, hashes, 13),
        proof(hashes, 5, 13),
        [signer.verifier(), new_key.verifier()],
    )
    assert result.ok, result.detail


def test_the_same_size_with_a_different_root_is_refused(signer: NoteSigner) -> None:
    honest = leaves(9)
    rewritten = honest[:4] + leaves(5, tag="rewritten")
    result = check_extends(head(signer, honest, 9), head(signer, rewritten, 9), [], [signer.verifier()])
    assert not result.ok
    assert result.reason == REASON_FORK
    assert "same tree size 9 but a different root hash" in result.message()


def test_the_same_size_with_a_non_empty_proof_is_refused(signer: NoteSigner) -> None:
    hashes = leaves(9)
    note = head(signer, hashes, 9)
    result = check_extends(note, note, [hashes[0]], [signer.verifier()])
    assert not result.ok and result.reason == REASON_PROOF


def test_heads_of_another_log_are_refused(signer: NoteSigner) -> None:
    hashes = leaves(13)
    other = NoteSigner.generate("other.example/log")
    result = check_extends(
        head(signer, hashes, 5),
        head(other, hashes, 13, origin="other.example/log"),
        proof(hashes, 5, 13),
        [signer.verifier(), other.verifier()],
    )
    assert not result.ok and result.reason == REASON_ORIGIN


def test_garbage_instead_of_a_note_is_a_result_not_an_exception(signer: NoteSigner) -> None:
    hashes = leaves(3)
    result = check_extends(b"not a checkpoint", head(signer, hashes, 3), [], [signer.verifier()])
    assert not result.ok and result.reason == REASON_SIGNATURE
    assert result.saved is None and result.latest is not None


def test_rfc3339() -> None:
    assert rfc3339_ms(0) == "1970-01-01T00:00:00.000Z"
    assert rfc3339_ms(1_700_000_000_123) == "2023-11-14T22:13:20.123Z"
    assert rfc3339_ms(None) is None
