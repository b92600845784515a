"""Tree math, the compact range and proof building against a literal RFC 9162 oracle."""

from __future__ import annotations

import hashlib
import itertools
import random
from collections.abc import Mapping
from functools import cache

import pytest

from avgate.ledger.merkle import (
    EMPTY_ROOT,
    CompactRange,
    MissingNodeError,
    NodeId,
    ProofError,
    build_consistency_proof,
    build_inclusion_proof,
    consistency_proof_nodes,
    inclusion_proof_nodes,
    leaf_hash,
    node_hash,
    range_node_ids,
    root_from_consistency_proof,
    root_from_inclusion_proof,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
)

MAX = 1025
SIZES = [*range(1, 131), 255, 256, 257, 1000, 1024, MAX]
PROOF_MAX = 70

_rng = random.Random(9162)
DATA = [_rng.randbytes(_rng.randrange(0, 64)) for _ in range(MAX)]
LEAVES = [leaf_hash(d) for d in DATA]


# ------------------------------------------------------ oracle: RFC 9162 §2.1, literally


def _h(b: bytes) -> bytes:
    return hashlib.sha256(b).digest()


@cache
def MTH(lo: int, hi: int) -> bytes:
    """MTH(D[lo:hi]) over DATA, written as in RFC 9162 §2.1.1."""
    n = hi - lo
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + DATA[lo])
    k = 1 << ((n - 1).bit_length() - 1)  # largest power of two smaller than n
    return _h(b"\x01" + MTH(lo, lo + k) + MTH(lo + k, hi))


def PATH(m: int, lo: int, hi: int) -> list[bytes]:
    """PATH(m, D[lo:hi]), RFC 9162 §2.1.3.1."""
    n = hi - lo
    if n == 1:
        return []
    k = 1 << ((n - 1).bit_length() - 1)
    if m < k:
        return [*PATH(m, lo, lo + k), MTH(lo + k, hi)]
    return [*PATH(m - k, lo + k, hi), MTH(lo, lo + k)]


def SUBPROOF(m: int, lo: int, hi: int, b: bool) -> list[bytes]:
    """SUBPROOF(m, D[lo:hi], b), RFC 9162 §2.1.4.1."""
    n = hi - lo
    if m == n:
        return [] if b else [MTH(lo, hi)]
    k = 1 << ((n - 1).bit_length() - 1)
    if m <= k:
        return [*SUBPROOF(m, lo, lo + k, b), MTH(lo + k, hi)]
    return [*SUBPROOF(m - k, lo + k, hi, False), MTH(lo, lo + k)]


def PROOF(m: int, n: int) -> list[bytes]:
    return SUBPROOF(m, 0, n, True)


# ----------------------------------------------------------------------- fixtures


def _perfect_nodes(size: int) -> dict[NodeId, bytes]:
    """Every perfect subtree of the first `size` leaves, level 0 included, via the oracle."""
    out: dict[NodeId, bytes] = {}
    level = 0
    while (1 << level) <= size:
        for index in range(size >> level):
            out[(level, index)] = MTH(index << level, (index + 1) << level)
        level += 1
    return out


STORE = _perfect_nodes(MAX)


class Fetcher:
    """A node store that counts batch calls and checks every id asked for exists at `size`."""

    def __init__(self, size: int, store: Mapping[NodeId, bytes] = STORE) -> None:
        self.size = size
        self.store = store
        self.calls = 0

    def __call__(self, ids: list[NodeId]) -> dict[NodeId, bytes]:
        self.calls += 1
        assert len(ids) == len(set(ids)), "duplicate ids in one batch"
        for level, index in ids:
            assert (index + 1) << level <= self.size, f"node ({level}, {index}) is not part of tree size {self.size}"
        return {i: self.store[i] for i in ids if i in self.store}


# --------------------------------------------------------------------------- hashing


def test_hash_definitions() -> None:
    empty_sha256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    assert EMPTY_ROOT.hex() == empty_sha256
    assert leaf_hash(b"abc") == hashlib.sha256(b"\x00abc").digest()
    a, b = LEAVES[0], LEAVES[1]
    assert node_hash(a, b) == hashlib.sha256(b"\x01" + a + b).digest()
    assert root_from_leaf_hashes([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


def test_known_roots_from_transparency_dev() -> None:
    """The 8-leaf tree of transparency-dev/merkle's (and CT's) reference tests."""
    data = [bytes.fromhex(x) for x in ("", "00", "10", "2021", "3031", "40414243", "5051525354555657")]
    data.append(bytes.fromhex("606162636465666768696a6b6c6d6e6f"))
    roots = [
        "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
        "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
        "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
        "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
        "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
        "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
        "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
        "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
    ]
    hashes = [leaf_hash(d) for d in data]
    cr = CompactRange()
    for n in range(1, 9):
        cr.append(hashes[n - 1])
        assert root_from_leaf_hashes(hashes[:n]).hex() == roots[n - 1]
        assert cr.root().hex() == roots[n - 1]


# ---------------------------------------------------------------------- roots, range


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"size={s}")
def test_root_matches_oracle(size: int) -> None:
    assert root_from_leaf_hashes(LEAVES[:size]) == MTH(0, size)


def test_compact_range_appends() -> None:
    cr = CompactRange()
    completed: dict[NodeId, bytes] = {}
    for i, h in enumerate(LEAVES):
        done = cr.append(h)
        assert cr.size == i + 1
        # Exactly the perfect nodes whose range ends at the new size, bottom-up.
        want = [(lvl, ((i + 1) >> lvl) - 1) for lvl in range(1, (i + 1).bit_length()) if (i + 1) % (1 << lvl) == 0]
        assert [(lvl, idx) for lvl, idx, _ in done] == want
        for lvl, idx, hh in done:
            assert (lvl, idx) not in completed
            completed[(lvl, idx)] = hh
        if cr.size in SIZES:
            assert cr.root() == root_from_leaf_hashes(LEAVES[: cr.size]) == MTH(0, cr.size)
            assert cr.hashes == [STORE[n] for n in range_node_ids(0, cr.size)]
    assert completed == {k: v for k, v in STORE.items() if k[0] >= 1}


def test_compact_range_extend_matches_append() -> None:
    a, b, c = CompactRange(), CompactRange(), CompactRange()
    nodes_a: list[tuple[int, int, bytes]] = []
    nodes_b: list[tuple[int, int, bytes]] = []
    for lo, hi in ((0, 1), (1, 7), (7, 64), (64, 65), (65, 500), (500, MAX)):
        for h in LEAVES[lo:hi]:
            nodes_a += a.append(h)
        nodes_b += b.extend(LEAVES[lo:hi])
        c.extend_quiet(iter(LEAVES[lo:hi]))
        assert a.size == b.size == c.size == hi
        assert a.root() == b.root() == c.root() == MTH(0, hi)
    assert nodes_a == nodes_b


def test_compact_range_rejects_bad_hash() -> None:
    cr = CompactRange()
    with pytest.raises(ValueError):
        cr.append(b"short")
    with pytest.raises(ValueError):
        cr.extend([LEAVES[0], b"x" * 33])
    assert cr.size == 1  # the good leaf before the bad one went in


@pytest.mark.parametrize("size", [0, *SIZES], ids=lambda s: f"size={s}")
def test_compact_range_resumes_from_stored_nodes(size: int) -> None:
    reads: list[NodeId] = []

    def get_node(level: int, index: int) -> bytes:
        reads.append((level, index))
        return STORE[(level, index)]

    cr = CompactRange.from_nodes(size, get_node)
    assert cr.size == size
    assert len(reads) == size.bit_count()
    assert reads == CompactRange.node_ids_for_size(size) == cr.node_ids()
    assert cr.root() == MTH(0, size)
    assert CompactRange.from_hashes(size, cr.hashes).root() == cr.root()
    for i in range(size, min(size + 40, MAX)):
        for lvl, idx, h in cr.append(LEAVES[i]):
            assert STORE[(lvl, idx)] == h
        assert cr.root() == MTH(0, i + 1)


def test_compact_range_from_hashes_checks_count() -> None:
    with pytest.raises(ValueError):
        CompactRange.from_hashes(3, [STORE[(1, 0)]])
    with pytest.raises(ValueError):
        CompactRange.from_hashes(1, [b"short"])


def test_range_node_ids_cover_exactly() -> None:
    for begin in range(0, 70):
        for end in range(begin, 70):
            ids = range_node_ids(begin, end)
            covered = [x for lvl, idx in ids for x in range(idx << lvl, (idx + 1) << lvl)]
            assert covered == list(range(begin, end))
            # Minimal: no two neighbours could merge into their parent.
            for (l1, i1), (l2, i2) in itertools.pairwise(ids):
                assert not (l1 == l2 and i1 % 2 == 0 and i2 == i1 + 1)


# -------------------------------------------------------------------------- proofs


def _check_refs_shape(refs: list) -> None:
    assert sum(r.is_ephemeral for r in refs) <= 1
    for r in refs:
        if r.is_ephemeral:
            assert len(r.parts) >= 2


def test_inclusion_proofs_exhaustive() -> None:
    for size in range(1, PROOF_MAX + 1):
        root = MTH(0, size)
        for index in range(size):
            refs = inclusion_proof_nodes(index, size)
            _check_refs_shape(refs)
            fetch = Fetcher(size)
            proof = build_inclusion_proof(index, size, fetch)
            assert fetch.calls == (1 if refs else 0)
            assert proof == PATH(index, 0, size), (index, size)
            verify_inclusion(LEAVES[index], index, size, proof, root)
            assert root_from_inclusion_proof(LEAVES[index], index, size, proof) == root


def test_consistency_proofs_exhaustive() -> None:
    for size2 in range(1, PROOF_MAX + 1):
        root2 = MTH(0, size2)
        for size1 in range(1, size2 + 1):
            refs = consistency_proof_nodes(size1, size2)
            _check_refs_shape(refs)
            fetch = Fetcher(size2)
            proof = build_consistency_proof(size1, size2, fetch)
            assert fetch.calls == (1 if refs else 0)
            assert proof == PROOF(size1, size2), (size1, size2)
            verify_consistency(size1, size2, proof, MTH(0, size1), root2)
            assert root_from_consistency_proof(size1, size2, proof, MTH(0, size1)) == root2


def test_proofs_in_larger_trees() -> None:
    rng = random.Random(6962)
    for _ in range(300):
        size = rng.randrange(1, MAX + 1)
        index = rng.randrange(size)
        size1 = rng.randrange(1, size + 1)
        proof = build_inclusion_proof(index, size, Fetcher(size))
        assert proof == PATH(index, 0, size)
        verify_inclusion(LEAVES[index], index, size, proof, MTH(0, size))
        cproof = build_consistency_proof(size1, size, Fetcher(size))
        assert cproof == PROOF(size1, size)
        verify_consistency(size1, size, cproof, MTH(0, size1), MTH(0, size))


def test_proof_arguments() -> None:
    with pytest.raises(ValueError):
        inclusion_proof_nodes(5, 5)
    with pytest.raises(ValueError):
        inclusion_proof_nodes(-1, 5)
    with pytest.raises(ValueError):
        consistency_proof_nodes(0, 5)
    with pytest.raises(ValueError):
        consistency_proof_nodes(6, 5)
    assert consistency_proof_nodes(5, 5) == []
    assert inclusion_proof_nodes(0, 1) == []


def test_missing_node_is_reported() -> None:
    store = dict(STORE)
    del store[(0, 6)]
    with pytest.raises(MissingNodeError, match=r"level=0, index=6"):
        build_inclusion_proof(7, 8, Fetcher(8, store))
    with pytest.raises(MissingNodeError):  # part of the ephemeral node of a 7-leaf tree
        build_inclusion_proof(0, 7, Fetcher(7, store))


def test_verifiers_reject_bad_arguments() -> None:
    proof = build_inclusion_proof(3, 10, Fetcher(10))
    root = MTH(0, 10)
    bad_calls = [
        (LEAVES[3], 10, 10, proof, root),
        (LEAVES[3], -1, 10, proof, root),
        (LEAVES[3], 3, 2**64, proof, root),
        (LEAVES[3], True, 10, proof, root),
        (LEAVES[3].hex(), 3, 10, proof, root),
        (LEAVES[3], 3, 10, proof, root.hex()),
        (LEAVES[3], 3, 10, [p.hex() for p in proof], root),
    ]
    verify_inclusion(LEAVES[3], 3, 10, proof, root)
    for args in bad_calls:
        with pytest.raises(ProofError):
            verify_inclusion(*args)  # type: ignore[arg-type]
    cproof = build_consistency_proof(3, 10, Fetcher(10))
    verify_consistency(3, 10, cproof, MTH(0, 3), root)
    for args2 in [
        (0, 10, cproof, MTH(0, 3), root),
        (0, 0, [], EMPTY_ROOT, EMPTY_ROOT),
        (10, 3, cproof, MTH(0, 3), root),
        (3, 10, [], MTH(0, 3), root),
        (10, 10, [], root, MTH(0, 3)),
        (10, 10, [root], root, root),
        (3, 10, cproof, MTH(0, 3).hex(), root),
    ]:
        with pytest.raises(ProofError):
            verify_consistency(*args2)  # type: ignore[arg-type]
    verify_consistency(10, 10, [], root, root)


# ------------------------------------------------------- an independent implementation


def test_against_pymerkle() -> None:
    """pymerkle's roots equal ours, its inclusion paths equal ours and its verifier accepts ours.

    Its consistency proofs are not in RFC 9162 form (they carry a base hash and rule/subset
    bits), so for consistency only its roots are used: our proofs must link them.
    """
    import pymerkle

    n_max = 48
    tree = pymerkle.InmemoryTree.init_from_entries(DATA[:n_max], algorithm="sha256")
    for size in range(1, n_max + 1):
        root = tree.get_root(size)
        assert root == MTH(0, size)
        for index in range(size):
            ours = build_inclusion_proof(index, size, Fetcher(size))
            theirs = tree.prove_inclusion(index + 1, size)
            assert theirs.path == [LEAVES[index], *ours]
            data = theirs.serialize()
            data["path"] = [h.hex() for h in (LEAVES[index], *ours)]
            pymerkle.MerkleProof.deserialize(data).verify(LEAVES[index], root, index=index + 1, size=size)
        for size1 in range(1, size + 1):
            proof = build_consistency_proof(size1, size, Fetcher(size))
            verify_consistency(size1, size, proof, tree.get_root(size1), root)
