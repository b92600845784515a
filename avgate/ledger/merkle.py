"""RFC 6962 / RFC 9162 Merkle tree math with SHA-256, in pure Python.

Hashing: a leaf is SHA-256(0x00 || data), an interior node SHA-256(0x01 || left || right),
the empty tree SHA-256(""). A tree of n leaves splits at the largest power of two
below n (RFC 9162 §2.1.1).

Node ids: (level, index) names the *perfect* subtree covering leaves
[index * 2**level, (index + 1) * 2**level); level 0 is the leaf hashes. Only perfect
subtrees are ever stored. A tree whose size is not a power of two also has
*ephemeral* nodes on its right edge, which change as the tree grows; a proof needs
at most one of them, and it is recomputed from the perfect nodes under it (as in
transparency-dev/merkle's proof package).

- `root_from_leaf_hashes`: the tree head of a list of leaf hashes.
- `CompactRange`: the right-edge frontier a sequencer keeps: append leaf hashes one by
  one (or in batches), learn which perfect nodes each append completed, read the root.
  `CompactRange.from_nodes` resumes it from stored nodes.
- `inclusion_proof_nodes` / `consistency_proof_nodes`: which nodes make up a proof;
  `required_node_ids` lists the stored hashes to fetch (one batch); `assemble_proof`
  turns fetched hashes into the RFC 9162 audit path. `build_inclusion_proof` /
  `build_consistency_proof` do all three with a synchronous batch fetcher.
- `verify_inclusion` / `verify_consistency`: RFC 9162 §2.1.3.2 and §2.1.4.2; they raise
  `ProofError` on any failure and return None on success.

Everything is tuned for CPython: bound methods in locals, prefixes preallocated, no
per-node objects on the hot paths.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

__all__ = [
    "EMPTY_ROOT",
    "HASH_SIZE",
    "MAX_TREE_SIZE",
    "CompactRange",
    "MissingNodeError",
    "NodeFetcher",
    "NodeId",
    "NodeRef",
    "ProofError",
    "assemble_proof",
    "build_consistency_proof",
    "build_inclusion_proof",
    "consistency_proof_nodes",
    "inclusion_proof_nodes",
    "leaf_hash",
    "node_hash",
    "range_node_ids",
    "required_node_ids",
    "root_from_consistency_proof",
    "root_from_inclusion_proof",
    "root_from_leaf_hashes",
    "verify_consistency",
    "verify_inclusion",
]

HASH_SIZE = 32
# RFC 9162 sizes and indices are uint64.
MAX_TREE_SIZE = (1 << 64) - 1

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"

EMPTY_ROOT: bytes = _sha256(b"").digest()

NodeId = tuple[int, int]
"""(level, index) of a perfect subtree."""


class ProofError(ValueError):
    """A proof, or the sizes/hashes it is checked against, does not verify."""


class MissingNodeError(LookupError):
    """The node store did not return a hash a proof or compact range needs."""


def leaf_hash(data: bytes) -> bytes:
    """SHA-256(0x00 || data): the RFC 6962 hash of one leaf's bytes."""
    return _sha256(_LEAF_PREFIX + data).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """SHA-256(0x01 || left || right): the RFC 6962 hash of an interior node."""
    return _sha256(_NODE_PREFIX + left + right).digest()


# --------------------------------------------------------------------------- roots


def root_from_leaf_hashes(hashes: Sequence[bytes]) -> bytes:
    """MTH(D[n]) (RFC 9162 §2.1.1) of the given leaf hashes; EMPTY_ROOT for none.

    Pairs neighbours level by level; a lone last node is promoted unchanged, which is
    exactly the RFC's split at the largest power of two below n.
    """
    n = len(hashes)
    if n == 0:
        return EMPTY_ROOT
    sha = _sha256
    one = _NODE_PREFIX
    level: Sequence[bytes] = hashes
    while n > 1:
        it = iter(level)
        nxt = [sha(one + a + b).digest() for a, b in zip(it, it, strict=False)]
        if n & 1:
            nxt.append(level[n - 1])
        level = nxt
        n = len(nxt)
    return level[0]


def _fold(hashes: Sequence[bytes]) -> bytes:
    """Root of a compact range given its perfect-node hashes left to right (non-empty)."""
    sha = _sha256
    one = _NODE_PREFIX
    h = hashes[-1]
    for i in range(len(hashes) - 2, -1, -1):
        h = sha(one + hashes[i] + h).digest()
    return h


def range_node_ids(begin: int, end: int) -> list[NodeId]:
    """The perfect nodes that exactly cover leaves [begin, end), left to right.

    For begin == 0 these are the nodes a `CompactRange` of size `end` holds, one per
    set bit of `end`, largest first.
    """
    if begin < 0 or end < begin:
        raise ValueError(f"invalid range [{begin}, {end})")
    out: list[NodeId] = []
    while begin < end:
        level = (end - begin).bit_length() - 1
        if begin:
            level = min(level, (begin & -begin).bit_length() - 1)
        out.append((level, begin >> level))
        begin += 1 << level
    return out


class CompactRange:
    """The right-edge frontier of a growing tree of size `size`.

    Holds the hashes of the perfect subtrees covering [0, size), one per set bit of
    size, largest (leftmost) first. Appending a leaf merges equal-sized subtrees and
    reports every perfect node the merge completed, so a sequencer can store them.
    """

    __slots__ = ("_hashes", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._hashes: list[bytes] = []

    @classmethod
    def from_hashes(cls, size: int, hashes: Sequence[bytes]) -> CompactRange:
        """Resume at `size` from the hashes of `range_node_ids(0, size)`, in that order."""
        _check_size(size, "size")
        want = size.bit_count()
        if len(hashes) != want:
            raise ValueError(f"a compact range of size {size} has {want} nodes, got {len(hashes)}")
        for h in hashes:
            _check_hash(h, "compact range node")
        cr = cls()
        cr._size = size
        cr._hashes = [bytes(h) for h in hashes]
        return cr

    @classmethod
    def from_nodes(cls, size: int, get_node: Callable[[int, int], bytes]) -> CompactRange:
        """Resume at `size` reading stored perfect nodes: get_node(level, index) -> hash.

        Only popcount(size) nodes are read (see `node_ids_for_size`), never the leaves.
        """
        _check_size(size, "size")
        return cls.from_hashes(size, [get_node(level, index) for level, index in range_node_ids(0, size)])

    @staticmethod
    def node_ids_for_size(size: int) -> list[NodeId]:
        """The stored nodes `from_nodes`/`from_hashes` need for `size`, left to right."""
        return range_node_ids(0, size)

    @property
    def size(self) -> int:
        return self._size

    @property
    def hashes(self) -> list[bytes]:
        """The frontier's perfect-node hashes, left to right (a copy)."""
        return list(self._hashes)

    def node_ids(self) -> list[NodeId]:
        """(level, index) of each hash in `hashes`."""
        return range_node_ids(0, self._size)

    def copy(self) -> CompactRange:
        cr = CompactRange()
        cr._size = self._size
        cr._hashes = list(self._hashes)
        return cr

    def append(self, leaf_hash: bytes) -> list[tuple[int, int, bytes]]:
        """Add one leaf hash; return the perfect nodes (level >= 1, index, hash) it completed.

        Nodes come bottom-up. The leaf itself (level 0, index = old size) is not listed.
        """
        if len(leaf_hash) != HASH_SIZE:
            raise ValueError(f"leaf hash must be {HASH_SIZE} bytes, got {len(leaf_hash)}")
        stack = self._hashes
        s = self._size
        self._size = s + 1
        h = leaf_hash
        if not s & 1:
            stack.append(h)
            return []
        sha = _sha256
        one = _NODE_PREFIX
        pop = stack.pop
        done: list[tuple[int, int, bytes]] = []
        level = 0
        while s & 1:
            h = sha(one + pop() + h).digest()
            s >>= 1
            level += 1
            done.append((level, s, h))
        stack.append(h)
        return done

    def extend(self, leaf_hashes: Iterable[bytes]) -> list[tuple[int, int, bytes]]:
        """Append many leaf hashes; return all completed nodes (level >= 1), in creation order."""
        stack = self._hashes
        push = stack.append
        pop = stack.pop
        sha = _sha256
        one = _NODE_PREFIX
        done: list[tuple[int, int, bytes]] = []
        add = done.append
        size = self._size
        try:
            for h in leaf_hashes:
                if len(h) != HASH_SIZE:
                    raise ValueError(f"leaf hash {size} must be {HASH_SIZE} bytes, got {len(h)}")
                s = size
                size += 1
                level = 0
                while s & 1:
                    h = sha(one + pop() + h).digest()
                    s >>= 1
                    level += 1
                    add((level, s, h))
                push(h)
        finally:
            self._size = size
        return done

    def extend_quiet(self, leaf_hashes: Iterable[bytes]) -> None:
        """Append many leaf hashes without reporting nodes (fastest; for verification)."""
        stack = self._hashes
        push = stack.append
        pop = stack.pop
        sha = _sha256
        one = _NODE_PREFIX
        size = self._size
        try:
            for h in leaf_hashes:
                if len(h) != HASH_SIZE:
                    raise ValueError(f"leaf hash {size} must be {HASH_SIZE} bytes, got {len(h)}")
                s = size
                size += 1
                while s & 1:
                    h = sha(one + pop() + h).digest()
                    s >>= 1
                push(h)
        finally:
            self._size = size

    def root(self) -> bytes:
        """MTH of the current tree; EMPTY_ROOT when empty."""
        if not self._hashes:
            return EMPTY_ROOT
        return _fold(self._hashes)

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


# -------------------------------------------------------------------------- proofs


@dataclass(frozen=True, slots=True)
class NodeRef:
    """One element of a proof, by position.

    A perfect node when `parts` is empty: its hash is the stored node (level, index).
    Otherwise ephemeral: (level, index) is its position on the tree's right edge and
    its hash is the root of the compact range `parts` (perfect node ids, left to
    right), which covers [index * 2**level, tree size).
    """

    level: int
    index: int
    parts: tuple[NodeId, ...] = ()

    @property
    def is_ephemeral(self) -> bool:
        return bool(self.parts)

    def node_ids(self) -> tuple[NodeId, ...]:
        """The stored perfect nodes this element needs."""
        return self.parts or ((self.level, self.index),)


def _siblings(index: int, from_level: int, size: int, out: list[NodeRef]) -> None:
    """Append, bottom-up, the proof elements for the path from node (from_level, index >> from_level)
    (where `index` is a leaf on that path) to the root of a tree of `size` leaves."""
    height = (size - 1).bit_length()
    for level in range(from_level, height):
        sib = (index >> level) ^ 1
        begin = sib << level
        if begin >= size:
            continue  # no right sibling at this level: the path node is promoted as is
        end = begin + (1 << level)
        if end <= size:
            out.append(NodeRef(level, sib))
        else:
            parts = range_node_ids(begin, size)
            if len(parts) == 1:
                out.append(NodeRef(parts[0][0], parts[0][1]))
            else:
                out.append(NodeRef(level, sib, tuple(parts)))


def inclusion_proof_nodes(index: int, size: int) -> list[NodeRef]:
    """The elements of the inclusion proof for leaf `index` in a tree of `size`, leaf upward.

    Requires 0 <= index < size. At most one element is ephemeral.
    """
    _check_size(size, "size")
    _check_size(index, "index")
    if index >= size:
        raise ValueError(f"leaf index {index} is not below tree size {size}")
    out: list[NodeRef] = []
    _siblings(index, 0, size, out)
    return out


def consistency_proof_nodes(size1: int, size2: int) -> list[NodeRef]:
    """The elements of the RFC 9162 consistency proof between sizes size1 and size2.

    Requires 0 < size1 <= size2 (empty when equal). The proof is the largest perfect
    subtree ending at size1 (left out when size1 is a power of two: it is the old root)
    followed by that subtree's inclusion path in the tree of size2.
    """
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    if size1 > size2:
        raise ValueError(f"size1 {size1} is greater than size2 {size2}")
    if size1 == 0:
        raise ValueError("a consistency proof from the empty tree is meaningless")
    if size1 == size2:
        return []
    level = (size1 & -size1).bit_length() - 1
    out: list[NodeRef] = []
    if size1 != 1 << level:
        out.append(NodeRef(level, (size1 - 1) >> level))
    _siblings(size1 - 1, level, size2, out)
    return out


def required_node_ids(refs: Iterable[NodeRef]) -> list[NodeId]:
    """Every stored perfect node the given proof elements need, without duplicates."""
    seen: dict[NodeId, None] = {}
    for ref in refs:
        for nid in ref.node_ids():
            seen[nid] = None
    return list(seen)


def assemble_proof(refs: Sequence[NodeRef], hashes: Mapping[NodeId, bytes]) -> list[bytes]:
    """The audit path for `refs` given the fetched perfect-node hashes.

    Raises MissingNodeError if a needed node is absent and ValueError if one is not
    32 bytes.
    """

    def get(nid: NodeId) -> bytes:
        try:
            h = hashes[nid]
        except KeyError:
            raise MissingNodeError(f"node (level={nid[0]}, index={nid[1]}) is not stored") from None
        if len(h) != HASH_SIZE:
            raise ValueError(f"node (level={nid[0]}, index={nid[1]}) hash is {len(h)} bytes, not {HASH_SIZE}")
        return bytes(h)

    out: list[bytes] = []
    for ref in refs:
        if ref.parts:
            out.append(_fold([get(nid) for nid in ref.parts]))
        else:
            out.append(get((ref.level, ref.index)))
    return out


NodeFetcher = Callable[[list[NodeId]], Mapping[NodeId, bytes]]


def build_inclusion_proof(index: int, size: int, get_nodes: NodeFetcher) -> list[bytes]:
    """Inclusion proof (audit path, leaf upward) for leaf `index` in the tree of `size`.

    `get_nodes(ids)` is called once with every needed (level, index) and returns a
    mapping from those ids to stored hashes. For an async store, use
    `inclusion_proof_nodes` + `required_node_ids` + `assemble_proof` instead.
    """
    refs = inclusion_proof_nodes(index, size)
    ids = required_node_ids(refs)
    return assemble_proof(refs, get_nodes(ids) if ids else {})


def build_consistency_proof(size1: int, size2: int, get_nodes: NodeFetcher) -> list[bytes]:
    """Consistency proof between size1 and size2 (0 < size1 <= size2); one `get_nodes` call."""
    refs = consistency_proof_nodes(size1, size2)
    ids = required_node_ids(refs)
    return assemble_proof(refs, get_nodes(ids) if ids else {})


# ----------------------------------------------------------------------- verifiers


def _check_size(value: int, what: str) -> None:
    if type(value) is not int:
        raise ProofError(f"{what} must be an int, got {type(value).__name__}")
    if value < 0 or value > MAX_TREE_SIZE:
        raise ProofError(f"{what} {value} is outside the uint64 range")


def _check_hash(value: object, what: str) -> bytes:
    if not isinstance(value, bytes | bytearray | memoryview):
        raise ProofError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) != HASH_SIZE:
        raise ProofError(f"{what} must be {HASH_SIZE} bytes, got {len(value)}")
    return bytes(value)


def _check_path(proof: Sequence[bytes], want: int, what: str) -> list[bytes]:
    if len(proof) != want:
        raise ProofError(f"{what} has {len(proof)} hashes, want {want}")
    return [_check_hash(p, f"{what} element {i}") for i, p in enumerate(proof)]


def _inclusion_proof_length(index: int, size: int) -> int:
    """Length of the audit path for leaf index < size."""
    inner = (index ^ (size - 1)).bit_length()  # levels where the path has both children
    border = (index >> inner).bit_count()  # left siblings above, on the right border
    return inner + border


def root_from_inclusion_proof(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes]) -> bytes:
    """The root implied by an inclusion proof (RFC 9162 §2.1.3.2 steps 1-5); ProofError if malformed."""
    _check_size(index, "leaf index")
    _check_size(size, "tree size")
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    r = _check_hash(leaf_hash, "leaf hash")
    path = _check_path(proof, _inclusion_proof_length(index, size), "inclusion proof")
    sha = _sha256
    one = _NODE_PREFIX
    fn = index
    sn = size - 1
    for p in path:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = sha(one + p + r).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            r = sha(one + r + p).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion(leaf_hash: bytes, index: int, size: int, proof: Sequence[bytes], root: bytes) -> None:
    """Check that `leaf_hash` is leaf `index` of the tree of `size` with `root` (RFC 9162 §2.1.3.2).

    Returns None; raises ProofError on any failure.
    """
    want = _check_hash(root, "root")
    got = root_from_inclusion_proof(leaf_hash, index, size, proof)
    if got != want:
        raise ProofError(f"inclusion proof leads to root {got.hex()}, not the expected {want.hex()}")


def _consistency_proof_length(size1: int, size2: int) -> int:
    """Length of the consistency proof for 0 < size1 < size2."""
    shift = (size1 & -size1).bit_length() - 1
    n = _inclusion_proof_length(size1 - 1, size2) - shift
    return n if size1 == 1 << shift else n + 1


def _roots_from_consistency_proof(size1: int, size2: int, proof: Sequence[bytes], root1: bytes) -> tuple[bytes, bytes]:
    """(old root, new root) recomputed from the proof per RFC 9162 §2.1.4.2; needs 0 < size1 < size2."""
    path = _check_path(proof, _consistency_proof_length(size1, size2), "consistency proof")
    if size1 & (size1 - 1) == 0:
        path.insert(0, root1)  # step 2: the old tree is a perfect subtree, its root is the seed
    sha = _sha256
    one = _NODE_PREFIX
    fn = size1 - 1
    sn = size2 - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            fr = sha(one + c + fr).digest()
            sr = sha(one + c + sr).digest()
            if not fn & 1:
                while fn and not fn & 1:
                    fn >>= 1
                    sn >>= 1
        else:
            sr = sha(one + sr + c).digest()
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the root")
    return fr, sr


def _check_consistency_args(size1: int, size2: int, proof: Sequence[bytes], root1: bytes) -> bytes:
    _check_size(size1, "size1")
    _check_size(size2, "size2")
    if size1 > size2:
        raise ProofError(f"size1 {size1} is greater than size2 {size2}: a log cannot shrink")
    if size1 == 0:
        raise ProofError(
            "consistency from the empty tree (size1 = 0) cannot be proved: RFC 9162 defines proofs for 0 < size1"
        )
    r1 = _check_hash(root1, "root1")
    if size1 == size2:
        if len(proof) != 0:
            raise ProofError(f"sizes are equal ({size1}) but the proof is not empty ({len(proof)} hashes)")
    elif len(proof) == 0:
        raise ProofError(f"empty consistency proof for different sizes {size1} < {size2}")
    return r1


def root_from_consistency_proof(size1: int, size2: int, proof: Sequence[bytes], root1: bytes) -> bytes:
    """Check the proof reproduces `root1` for size1 and return the root it implies for size2."""
    r1 = _check_consistency_args(size1, size2, proof, root1)
    if size1 == size2:
        return r1
    fr, sr = _roots_from_consistency_proof(size1, size2, proof, r1)
    if fr != r1:
        raise ProofError(f"consistency proof leads to old root {fr.hex()}, not root1 {r1.hex()}")
    return sr


def verify_consistency(size1: int, size2: int, proof: Sequence[bytes], root1: bytes, root2: bytes) -> None:
    """Check that the tree (size2, root2) extends the tree (size1, root1) (RFC 9162 §2.1.4.2).

    Requires 0 < size1 <= size2; equal sizes need an empty proof and equal roots.
    Returns None; raises ProofError on any failure.
    """
    r1 = _check_consistency_args(size1, size2, proof, root1)
    r2 = _check_hash(root2, "root2")
    if size1 == size2:
        if r1 != r2:
            raise ProofError(f"sizes are equal ({size1}) but the roots differ: {r1.hex()} != {r2.hex()}")
        return
    fr, sr = _roots_from_consistency_proof(size1, size2, proof, r1)
    if fr != r1:
        raise ProofError(f"consistency proof leads to old root {fr.hex()}, not root1 {r1.hex()}")
    if sr != r2:
        raise ProofError(f"consistency proof leads to new root {sr.hex()}, not root2 {r2.hex()}")
