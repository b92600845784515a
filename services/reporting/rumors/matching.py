"""Text matching against refuted claims: method "char-ngram-v1".

Pure computation (no I/O): normalisation, character n-grams, the score and
an inverted index over the active claims. Embeddings replace or join this
when the inference work lands; the method name travels with every match.

Normalisation
    Unicode NFKC (full-width letters, digits and punctuation become their
    half-width forms; compatibility ideographs their unified forms), then
    case folding. What remains is read as runs: CJK ideographs, and "words"
    of letters and digits (any script). Everything else (punctuation,
    whitespace, symbols) is dropped; it separates words but NOT ideographs,
    because Chinese has no spaces to lose and an inserted space or dot
    ("新 冠 疫 苗", "新.冠") is a common way to dodge a filter. A word between
    ideographs does end the ideograph run ("5G基站" is the word "5g" and the
    run "基站"). Traditional and simplified forms are NOT unified.

n-grams
    CJK runs give character bigrams (a run of one ideograph, itself); words
    give character trigrams within the word, a two-character word itself
    ("5g", "is"), a one-character word nothing. Trigrams within words rather
    than whole words: they survive inflection and small misspellings
    ("vaccine", "vaccines", "vaccinated" share "vac", "acc", "cci", "cin").
    Trigrams stop at word boundaries so that word order, which paraphrases
    change freely, costs nothing; whole words would add no recall that the
    trigrams do not already give.

Score
    For a claim: A its distinct n-grams, a = |A|, L its number of n-gram
    occurrences. For one input field (title, description or transcript)
    with n-gram sequence f_1..f_n and distinct n-grams B, b = |B|:

        window(A, F) = max over s of |A ∩ {f_s, ..., f_(s+W-1)}| / a,  W = 2L
        dice(A, F)   = 2 |A ∩ B| / (a + b)
        score        = max(window, dice)

    `window` is the containment of the claim in the best passage of the
    input about twice the claim's length: a short claim anywhere in a long
    transcript scores as if it were alone, and the room of 2L absorbs the
    words a paraphrase inserts. `dice` is the symmetric measure that takes
    over when the input is shorter than the claim (a title carrying the
    claim's key phrase): it exceeds containment exactly when b < a, so the
    maximum picks the right one without a length switch. Identical texts
    score 1.0, texts without shared n-grams 0.0. A match's field is the one
    with the best score (title before description before transcript on
    ties) and its passage is the best window (or the whole field when
    `dice` wins), at most 500 characters.

Cost
    A field of n characters costs O(n) to cut into n-grams. Candidates come
    from the inverted index: one probe per distinct n-gram of the field or
    per n-gram of the index vocabulary, whichever is fewer, so the postings
    visited never exceed the index's size. |A ∩ B| bounds both measures
    from above (window <= |A ∩ B| / a), so most claims stop there. A claim
    that could still reach the threshold is scored only where it can: by
    pigeonhole, a window holding k of the a claim n-grams holds at least one
    of any a - k + 1 of them, so the windows worth scanning lie around the
    occurrences of its rarest n-grams in the input (or, when that is
    cheaper, all of its occurrences are scanned once). Nothing compares
    every claim with every position. `MatchStats` counts the work.
"""

from __future__ import annotations

import bisect
import math
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

METHOD = "char-ngram-v1"
MAX_PASSAGE = 500
BLOCK = 64
"""Input positions per block when long inputs are narrowed to the blocks worth scanning."""

_CJK = (
    "\u3007"  # ideographic number zero
    "\u3400-\u4dbf"  # extension A
    "\u4e00-\u9fff"  # unified ideographs
    "\uf900-\ufaff"  # compatibility ideographs (NFKC maps most to unified)
    "\U00020000-\U0003134f"  # extensions B-G and the supplementary compatibility block
)
# Runs of letters and digits of any script (\w without the underscore), found in the input as written.
_RUN = re.compile(r"[^\W_]+")
# Within a normalised run: ideographs, other letters and digits, anything else (dropped).
_PART = re.compile(f"([{_CJK}]+)|([^\\W_{_CJK}]+)|[\\W_]+")


def _fold(text: str) -> str:
    return unicodedata.normalize("NFKC", text).casefold()


@dataclass(frozen=True)
class Grams:
    """The n-grams of one text in order, each with the span of the text it came from."""

    text: str
    """The text as matched (NFC: canonically equal to the input); spans index it."""
    grams: list[str]
    starts: list[int]
    ends: list[int]

    def passage(self, first: int, last: int) -> str:
        """The text from n-gram `first` to n-gram `last` (inclusive), at most 500 characters."""
        return self.text[self.starts[first] : self.ends[last]][:MAX_PASSAGE]


def normalise(text: str) -> str:
    """The matchable characters of `text`: NFKC, case-folded, without punctuation and whitespace."""
    return "".join(m.group() for m in _RUN.finditer(_fold(text)))


def ngrams(text: str) -> Grams:
    """The "char-ngram-v1" n-grams of `text`, in order (see the module docstring)."""
    shown = unicodedata.normalize("NFC", text)
    grams: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    # The ideograph run being collected: its characters and their offsets in `shown`.
    # It survives punctuation and whitespace, and ends at a word.
    cjk: list[str] = []
    cjk_at: list[int] = []

    def flush_cjk() -> None:
        if len(cjk) == 1:
            grams.append(cjk[0])
            starts.append(cjk_at[0])
            ends.append(cjk_at[0] + 1)
        elif cjk:
            run = "".join(cjk)
            grams.extend(run[k : k + 2] for k in range(len(run) - 1))
            starts.extend(cjk_at[:-1])
            ends.extend(at + 1 for at in cjk_at[1:])
        cjk.clear()
        cjk_at.clear()

    def add_word(word: str, at: Sequence[int]) -> None:
        if len(word) == 2:
            grams.append(word)
            starts.append(at[0])
            ends.append(at[1] + 1)
        elif len(word) > 2:
            grams.extend(word[k : k + 3] for k in range(len(word) - 2))
            starts.extend(at[: len(word) - 2])
            ends.extend(a + 1 for a in at[2:])

    for run in _RUN.finditer(shown):
        raw = run.group()
        folded = _fold(raw)
        if len(folded) == len(raw):
            offsets: Sequence[int] = range(run.start(), run.end())
        else:
            # Some character folds to several (or none): map each folded character to its source.
            mapped: list[int] = []
            for k, ch in enumerate(raw):
                mapped.extend([run.start() + k] * len(_fold(ch)))
            if len(mapped) != len(folded):  # folding the run differs from folding its characters
                folded = "".join(_fold(ch) for ch in raw)
            offsets = mapped
        for part in _PART.finditer(folded):
            ideographs, word = part.group(1), part.group(2)
            at = offsets[part.start() : part.end()]
            if ideographs:
                cjk.extend(ideographs)
                cjk_at.extend(at)
            elif word:
                flush_cjk()
                add_word(word, at)
    flush_cjk()
    return Grams(shown, grams, starts, ends)


# --------------------------------------------------------------------------- the score, directly


def score(claim: str, text: str) -> float:
    """The "char-ngram-v1" score of `claim` in `text`, computed directly (the index computes the same)."""
    index = RumorIndex([IndexEntry("claim", "", claim)])
    found = index.match({"text": text}, owners=None, threshold=math.ulp(0.0))
    return found[0].score if found else 0.0


# --------------------------------------------------------------------------- the index


@dataclass(frozen=True)
class IndexEntry:
    """What the index holds of an active refuted rumour: its id, its owner ("" shared) and its claim."""

    key: str
    owner: str
    claim: str


@dataclass(frozen=True)
class _Claim:
    key: str
    owner: str
    grams: frozenset[str]
    length: int
    """n-gram occurrences (L): the window is 2L wide."""


@dataclass(frozen=True)
class Match:
    key: str
    score: float
    field: str
    passage: str


@dataclass
class MatchStats:
    """Work done by one match, for tests of the algorithm (never for timing)."""

    input_grams: int = 0
    """n-grams cut from the input fields."""
    probes: int = 0
    """Look-ups: of an input n-gram in the index, or of an index n-gram in the input."""
    postings: int = 0
    """Claim references visited in posting lists."""
    candidates: int = 0
    """Claims whose bound reached the threshold and that were scored in windows."""
    positions: int = 0
    """Input positions of claim n-grams read while scoring windows, plus binary searches."""
    block_steps: int = 0
    """Operations on per-block bit sets (each over all blocks of a field at once)."""


@dataclass
class _Field:
    name: str
    grams: Grams
    distinct: set[str] = field(default_factory=set)
    positions: dict[str, list[int]] = field(default_factory=dict)
    """Where each n-gram of the claims in question occurs (sorted)."""
    masks: dict[str, int] = field(default_factory=dict)

    @property
    def blocks(self) -> int:
        return -(-len(self.grams.grams) // BLOCK)

    def block_mask(self, gram: str) -> int:
        """Bit j set: `gram` occurs in block j (positions j * BLOCK to (j + 1) * BLOCK - 1)."""
        mask = self.masks.get(gram)
        if mask is None:
            bits = bytearray(-(-self.blocks // 8))
            for p in self.positions[gram]:
                block = p // BLOCK
                bits[block >> 3] |= 1 << (block & 7)
            mask = self.masks[gram] = int.from_bytes(bits, "little")
        return mask


class RumorIndex:
    """An immutable inverted index (n-gram → claims) over active claims, by owner.

    Build a new one to change it; matching never mutates it, so one index can
    serve concurrent matches from several threads.
    """

    def __init__(self, entries: Iterable[IndexEntry]):
        self._claims: list[_Claim] = []
        self._postings: dict[str, dict[str, list[int]]] = {}
        for entry in entries:
            cut = ngrams(entry.claim)
            if not cut.grams:
                continue
            number = len(self._claims)
            claim = _Claim(entry.key, entry.owner, frozenset(cut.grams), len(cut.grams))
            self._claims.append(claim)
            postings = self._postings.setdefault(entry.owner, {})
            for gram in claim.grams:
                postings.setdefault(gram, []).append(number)

    def __len__(self) -> int:
        return len(self._claims)

    @property
    def size(self) -> int:
        """Posting entries held: the sum of the claims' distinct n-gram counts."""
        return sum(len(c.grams) for c in self._claims)

    def match(
        self,
        fields: Mapping[str, str],
        *,
        owners: Sequence[str] | None,
        threshold: float,
        stats: MatchStats | None = None,
    ) -> list[Match]:
        """Claims of `owners` (None: every owner) scoring at least `threshold` (> 0) in any field, best first.

        `fields` maps a field name to its text, in order of preference on ties.
        """
        if not 0 < threshold <= 1:
            raise ValueError("threshold must be in (0, 1]")
        stats = stats if stats is not None else MatchStats()
        selected = [p for o, p in self._postings.items() if owners is None or o in owners]
        best: dict[int, Match] = {}
        for name, text in fields.items():
            if not text:
                continue
            cut = ngrams(text)
            stats.input_grams += len(cut.grams)
            if not cut.grams:
                continue
            f = _Field(name, cut, set(cut.grams))
            for number, found in self._match_field(f, selected, threshold, stats):
                if number not in best or found.score > best[number].score:
                    best[number] = found
        return sorted(best.values(), key=lambda m: (-m.score, m.key))

    def _match_field(
        self, f: _Field, selected: list[dict[str, list[int]]], threshold: float, stats: MatchStats
    ) -> Iterable[tuple[int, Match]]:
        shared: Counter[int] = Counter()
        for postings in selected:
            if len(postings) < len(f.distinct):
                stats.probes += len(postings)
                lists = [numbers for gram, numbers in postings.items() if gram in f.distinct]
            else:
                stats.probes += len(f.distinct)
                lists = [numbers for gram in f.distinct if (numbers := postings.get(gram)) is not None]
            for numbers in lists:
                stats.postings += len(numbers)
                shared.update(numbers)
        b = len(f.distinct)
        plans: list[tuple[int, int, float]] = []
        for number, common in shared.items():
            a = len(self._claims[number].grams)
            dice = 2 * common / (a + b)
            if max(common / a, dice) >= threshold:
                plans.append((number, common, dice))
        if not plans:
            return
        wanted = set().union(*(self._claims[n].grams for n, _, _ in plans)) & f.distinct
        for position, gram in enumerate(f.grams.grams):
            if gram in wanted:
                f.positions.setdefault(gram, []).append(position)
        for number, common, dice in plans:
            claim = self._claims[number]
            a = len(claim.grams)
            if common / a <= dice:
                # The input is no longer than the claim: no window beats the symmetric measure.
                yield number, Match(claim.key, dice, f.name, f.grams.passage(0, len(f.grams.grams) - 1))
                continue
            stats.candidates += 1
            # Only windows that beat both the threshold and dice matter: they hold at least `need` n-grams.
            need = max(1, math.ceil(max(threshold, dice) * a - 1e-9))
            window = _best_window(claim, f, need, stats)
            if window is not None and window[0] / a >= dice:
                count, first, last = window
                yield number, Match(claim.key, count / a, f.name, f.grams.passage(first, last))
            elif dice >= threshold:
                yield number, Match(claim.key, dice, f.name, f.grams.passage(0, len(f.grams.grams) - 1))


def _best_window(claim: _Claim, f: _Field, need: int, stats: MatchStats) -> tuple[int, int, int] | None:
    """(count, first, last) of the window holding the most claim n-grams, if it holds at least `need`."""
    present = {g: f.positions[g] for g in claim.grams if g in f.positions}
    if len(present) < need:
        return None
    width = 2 * claim.length
    span = (width - 1) // BLOCK + 2  # blocks a window of `width` positions can touch
    if len(f.grams.grams) <= (span + 1) * BLOCK:
        # A short field: every occurrence is worth reading.
        hits = sorted((p, g) for g, positions in present.items() for p in positions)
        stats.positions += len(hits)
        found = _scan(hits, width)
        return found if found is not None and found[0] >= need else None
    best: tuple[int, int, int] | None = None
    for low, high in _regions(_promising_blocks(present, f, span, need, stats), span):
        hits = []
        for gram, positions in present.items():
            i = bisect.bisect_left(positions, low)
            j = bisect.bisect_right(positions, high, lo=i)
            hits.extend((p, gram) for p in positions[i:j])
        stats.positions += len(present) + len(hits)
        hits.sort()
        found = _scan(hits, width)
        if found is not None and (best is None or found[0] > best[0]):
            best = found
    return best if best is not None and best[0] >= need else None


def _promising_blocks(present: Mapping[str, list[int]], f: _Field, span: int, need: int, stats: MatchStats) -> int:
    """Bit j set: blocks j to j + span - 1 hold at least `need` distinct claim n-grams between them.

    Every window starting in block j lies within those blocks, so windows
    starting elsewhere cannot hold `need`. The count per block is kept
    bit-sliced (one integer per bit of the count, one bit per block), so
    each step is one operation over all blocks at once.
    """
    planes: list[int] = []
    for gram in present:
        mask = f.block_mask(gram)
        spread = mask
        for k in range(1, span):
            spread |= mask >> k
        stats.block_steps += span
        carry = spread
        for i in range(len(planes)):  # add 1 where `carry` has a bit: a ripple-carry adder per block
            planes[i], carry = planes[i] ^ carry, planes[i] & carry
            stats.block_steps += 1
            if not carry:
                break
        if carry:
            planes.append(carry)
    # Compare each block's count with `need`, from the most significant bit down.
    greater, equal = 0, (1 << f.blocks) - 1
    for i in reversed(range(max(len(planes), need.bit_length()))):
        plane = planes[i] if i < len(planes) else 0
        if need >> i & 1:
            equal &= plane
        else:
            greater |= equal & plane
            equal &= ~plane
        stats.block_steps += 1
    return greater | equal


def _regions(blocks: int, span: int) -> list[tuple[int, int]]:
    """Merged position ranges covering every window that starts in a block whose bit is set."""
    regions: list[tuple[int, int]] = []
    bits = bin(blocks)[:1:-1]  # bit j at index j
    j = bits.find("1")
    while j >= 0:
        low, high = j * BLOCK, (j + span) * BLOCK - 1
        if regions and low <= regions[-1][1] + 1:
            regions[-1] = (regions[-1][0], max(regions[-1][1], high))
        else:
            regions.append((low, high))
        j = bits.find("1", j + 1)
    return regions


def _scan(hits: list[tuple[int, str]], width: int) -> tuple[int, int, int] | None:
    """Two pointers over position-sorted hits: the window of `width` positions with most distinct n-grams."""
    inside: Counter[str] = Counter()
    best: tuple[int, int, int] | None = None
    left = 0
    for position, gram in hits:
        inside[gram] += 1
        while position - hits[left][0] >= width:
            dropped = hits[left][1]
            inside[dropped] -= 1
            if not inside[dropped]:
                del inside[dropped]
            left += 1
        if best is None or len(inside) > best[0]:
            best = (len(inside), hits[left][0], position)
    return best
