"""Which ledger signing keys `avgate feed follow` trusts: pinned on first use.

The first run with a state file trusts the keys the log publishes then
(ListSigningKeys) and pins them in the state file; every later run trusts only
the pinned keys and never asks the log again, so a server that starts
publishing another key cannot get its heads accepted. `--vkey` is the one way
to change the pins: the keys given are trusted, and pinned in place of the old
ones. (The ledger's heads carry no announcement of a successor key, so a
rotation is taken only from the operator, out of band.) A head that no pinned
key signed stops the client with the key it was signed by.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence

from avgate.ledger.checkpoint import Checkpoint, NoteError, NoteVerifier, UnverifiedNoteError, open_checkpoint


class FeedError(Exception):
    """A failure that stops the client with exit status 1."""


def _verifiers(vkeys: Sequence[str], what: str) -> list[NoteVerifier]:
    try:
        return [NoteVerifier.from_vkey(v) for v in vkeys]
    except NoteError as exc:
        raise FeedError(f"{what}: {exc}") from exc


class LedgerTrust:
    """The trusted keys of one run: `given` (--vkey), else `pinned` (from the state file), else
    the published keys at first use. `pinned` is what the state file should hold afterwards."""

    def __init__(self, given: Sequence[str], pinned: Sequence[str] | None, where: str):
        self._given = list(given)
        self.pinned: list[str] | None = list(given) if given else (list(pinned) if pinned else None)
        self._where = where
        self._verifiers: list[NoteVerifier] | None = None

    async def verifiers(self, published: Callable[[], Awaitable[list[str]]]) -> list[NoteVerifier]:
        """The trusted keys; `published` (the log's keys) is called only on first use."""
        if self._verifiers is None:
            if self.pinned is None:
                keys = await published()
                self._verifiers = _verifiers(keys, "the log publishes a malformed signing key")
                self.pinned = keys
            else:
                self._verifiers = _verifiers(self.pinned, "--vkey" if self._given else f"a key pinned in {self._where}")
        return self._verifiers

    @property
    def known(self) -> list[NoteVerifier]:
        """The trusted keys, once `verifiers` or `open` has run."""
        if self._verifiers is None:
            raise RuntimeError("no head was opened yet")
        return self._verifiers

    async def open(self, note: bytes, published: Callable[[], Awaitable[list[str]]], what: str) -> Checkpoint:
        """The checkpoint in `note` if a trusted key signed it; FeedError naming the signer otherwise."""
        verifiers = await self.verifiers(published)
        try:
            return open_checkpoint(note, verifiers)
        except UnverifiedNoteError as exc:
            signers = ", ".join(f"{s.name}+{s.key_hash:08x}" for s in exc.signatures) or "nobody"
            trusted = ", ".join(f"{v.name}+{v.key_hash:08x}" for v in verifiers)
            how = "given with --vkey" if self._given else f"pinned in {self._where}"
            raise FeedError(
                f"{what} does not verify: it is signed by {signers}, not by a key {how} ({trusted}). "
                "If the log rotated its key, check the new key with its operator and run again with "
                "--vkey NEW_KEY (and --vkey OLD_KEY while heads by the old key still come)"
            ) from exc
        except NoteError as exc:
            raise FeedError(f"{what} does not verify: {exc}") from exc
