# ruff: noqa: RUF001 - full-width letters and Chinese punctuation are what these tests are about
"""Matching text against refuted claims ("char-ngram-v1"): normalisation,
n-grams, the score's properties, the index, and the work a long transcript costs."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.reporting.rumors.matching import (
    MAX_PASSAGE,
    IndexEntry,
    MatchStats,
    RumorIndex,
    ngrams,
    normalise,
    score,
)

CLAIM_ZH = "5G基站会传播新冠病毒，导致人感染"
CLAIM_EN = "Drinking hot water cures coronavirus infection"


def grams(text: str) -> list[str]:
    return ngrams(text).grams


def reference_score(claim: str, text: str) -> float:
    """The module docstring's formula, computed by brute force over every window."""
    claim_grams = grams(claim)
    field = grams(text)
    a = set(claim_grams)
    if not a or not field:
        return 0.0
    width = 2 * len(claim_grams)
    window = max(len(a & set(field[s : s + width])) for s in range(len(field))) / len(a)
    dice = 2 * len(a & set(field)) / (len(a) + len(set(field)))
    return max(window, dice)


class TestNormalisation:
    @pytest.mark.parametrize(
        ("text", "expected"),
        [
            ("ＣＯＶＩＤ－１９", "covid19"),
            ("Hello, World!", "helloworld"),
            ("新冠，疫苗。", "新冠疫苗"),
            ("  新 冠\t疫\n苗 ", "新冠疫苗"),
            ("Straße", "strasse"),
        ],
        ids=["full-width", "case-and-punctuation", "chinese-punctuation", "whitespace", "case-folding"],
    )
    def test_keeps_only_folded_letters_digits_and_ideographs(self, text: str, expected: str) -> None:
        assert normalise(text) == expected


class TestNgrams:
    def test_ideographs_give_bigrams(self) -> None:
        assert grams("新冠疫苗") == ["新冠", "冠疫", "疫苗"]

    def test_ideograph_runs_continue_across_punctuation_and_spaces(self) -> None:
        assert grams("新 冠.疫，苗") == grams("新冠疫苗")

    def test_a_single_ideograph_is_its_own_gram(self) -> None:
        assert grams("谣") == ["谣"]

    def test_words_give_trigrams_within_the_word(self) -> None:
        assert grams("Hot water") == ["hot", "wat", "ate", "ter"]

    def test_two_character_words_are_kept_whole_and_single_letters_dropped(self) -> None:
        assert grams("a 5G is") == ["5g", "is"]

    def test_a_word_ends_an_ideograph_run(self) -> None:
        assert grams("新冠5G基站") == ["新冠", "5g", "基站"]

    def test_full_width_and_case_do_not_change_the_grams(self) -> None:
        assert grams("ＨＯＴ　ＷＡＴＥＲ，新冠") == grams("hot water, 新冠")

    def test_spans_point_into_the_text_as_written(self) -> None:
        cut = ngrams("Ｈｏｔ！新冠")
        assert [cut.text[s:e] for s, e in zip(cut.starts, cut.ends, strict=True)] == ["Ｈｏｔ", "新冠"]

    def test_text_without_letters_or_ideographs_has_no_grams(self) -> None:
        assert grams("!!! ... ？？") == []


class TestScore:
    @pytest.mark.parametrize("claim", [CLAIM_ZH, CLAIM_EN, "新冠 vaccine 导致 autism"], ids=["zh", "en", "mixed"])
    def test_identical_texts_score_one(self, claim: str) -> None:
        assert score(claim, claim) == 1.0

    @pytest.mark.parametrize(
        ("claim", "text"),
        [
            (CLAIM_ZH, "今天天气很好，我们去公园散步吧"),
            (CLAIM_EN, "The weather is fine today and we walk in the park"),
        ],
        ids=["zh", "en"],
    )
    def test_unrelated_texts_score_about_zero(self, claim: str, text: str) -> None:
        assert score(claim, text) < 0.1

    @pytest.mark.parametrize(
        ("claim", "noisy"),
        [
            (CLAIM_ZH, "５Ｇ 基站 会 传播 新冠 病毒！！导致……人感染"),
            (CLAIM_EN, "DRINKING  HOT-WATER cures Coronavirus... infection?!"),
        ],
        ids=["zh-full-width-and-spaces", "en-case-and-punctuation"],
    )
    def test_case_width_punctuation_and_spacing_do_not_matter(self, claim: str, noisy: str) -> None:
        assert score(claim, noisy) == 1.0

    @pytest.mark.parametrize(
        ("claim", "paraphrase"),
        [
            (CLAIM_ZH, "网传5G基站传播新冠病毒，会导致人感染"),
            (CLAIM_EN, "A viral video claims that drinking very hot water can cure a coronavirus infection."),
        ],
        ids=["zh", "en"],
    )
    def test_a_paraphrase_with_the_same_key_phrases_scores_high(self, claim: str, paraphrase: str) -> None:
        assert score(claim, paraphrase) >= 0.75

    def test_a_short_claim_inside_a_long_transcript_scores_as_if_alone(self) -> None:
        filler = "今天我们来聊一聊家常菜的做法，先把锅烧热再放油。" * 500
        transcript = filler + "有人说" + CLAIM_ZH + "，这是真的吗？" + filler
        assert len(transcript) > 20_000
        assert score(CLAIM_ZH, transcript) == 1.0

    def test_a_title_with_the_key_phrase_scores_by_the_symmetric_measure(self) -> None:
        # The title is shorter than the claim: containment in it could not exceed 6/14.
        assert score(CLAIM_ZH, "5G传播新冠病毒") == pytest.approx(2 * 6 / (14 + 6))

    def test_one_shared_word_scores_low(self) -> None:
        assert score(CLAIM_ZH, "病毒") < 0.2
        assert score(CLAIM_EN, "hot water") < 0.3

    @settings(max_examples=150, deadline=None)
    @given(
        claim=st.text(alphabet="新冠疫苗病毒传播 ,", min_size=1, max_size=12),
        text=st.text(alphabet="新冠疫苗病毒传播基站 ,", min_size=0, max_size=900),
    )
    def test_the_index_computes_exactly_the_documented_formula(self, claim: str, text: str) -> None:
        # Texts up to 900 characters take the block-narrowed path (more than (span + 1) * 64 n-grams).
        assert score(claim, text) == pytest.approx(reference_score(claim, text))

    @pytest.mark.parametrize("seed", range(20))
    def test_long_texts_are_narrowed_to_blocks_without_changing_the_score(self, seed: int) -> None:
        rng = random.Random(seed)
        claim = "".join(rng.choice("新冠疫苗病毒传播") for _ in range(rng.randint(3, 10)))
        text = "".join(rng.choice("新冠疫苗病毒传播基站，") for _ in range(rng.randint(800, 2000)))
        expected = reference_score(claim, text)
        index = RumorIndex([IndexEntry("c", "", claim)])
        for threshold in (0.01, expected):  # at exactly the best score, the best window must still be found
            stats = MatchStats()
            found = index.match({"text": text}, owners=None, threshold=threshold, stats=stats)
            assert stats.block_steps > 0
            assert [m.score for m in found] == [pytest.approx(expected)]


def index_of(*claims: tuple[str, str, str]) -> RumorIndex:
    return RumorIndex(IndexEntry(key, owner, claim) for key, owner, claim in claims)


class TestIndex:
    def test_only_the_given_owners_are_matched(self) -> None:
        index = index_of(("shared", "", CLAIM_ZH), ("mine", "tenant-a", CLAIM_ZH), ("theirs", "tenant-b", CLAIM_ZH))
        found = index.match({"title": CLAIM_ZH}, owners=("", "tenant-a"), threshold=0.5)
        assert sorted(m.key for m in found) == ["mine", "shared"]
        assert len(index.match({"title": CLAIM_ZH}, owners=None, threshold=0.5)) == 3

    def test_matches_at_or_above_the_threshold_best_first(self) -> None:
        index = index_of(("zh", "", CLAIM_ZH), ("en", "", CLAIM_EN), ("other", "", "喝板蓝根可以预防新冠病毒感染"))
        text = "网传5G基站传播新冠病毒，会导致人感染。Drinking hot water cures coronavirus, they say."
        found = index.match({"transcript": text}, owners=None, threshold=0.6)
        assert {m.key for m in found} == {"zh", "en"}
        assert found[0].score >= found[1].score >= 0.6
        assert [m.score for m in found] == sorted((score(c, text) for c in (CLAIM_ZH, CLAIM_EN)), reverse=True)
        assert score("喝板蓝根可以预防新冠病毒感染", text) < 0.6

    def test_the_field_is_the_one_that_scored_best_and_the_passage_is_its_window(self) -> None:
        index = index_of(("zh", "", CLAIM_ZH))
        transcript = "开场白。" * 300 + "有人说" + CLAIM_ZH + "。" + "结束语。" * 300
        (found,) = index.match(
            {"title": "健康讲座", "description": "5G和病毒", "transcript": transcript}, owners=None, threshold=0.6
        )
        assert found.field == "transcript"
        assert found.score == 1.0
        assert CLAIM_ZH.split("，")[0] in found.passage
        assert len(found.passage) <= MAX_PASSAGE

    def test_on_a_tie_the_earlier_field_wins(self) -> None:
        index = index_of(("zh", "", CLAIM_ZH))
        (found,) = index.match({"title": CLAIM_ZH, "transcript": CLAIM_ZH}, owners=None, threshold=0.6)
        assert found.field == "title"

    def test_claims_without_grams_are_not_indexed(self) -> None:
        assert len(index_of(("empty", "", "?!"), ("zh", "", CLAIM_ZH))) == 1


class TestLongTranscripts:
    def test_a_200000_character_transcript_against_1000_claims_costs_linear_work(self) -> None:
        rng = random.Random(20261201)
        ideographs = [chr(c) for c in range(0x4E00, 0x4E00 + 3000)]
        # A small vocabulary shared by the claims and the transcript: most claims' n-grams occur
        # in it, the hard case for the bound that skips claims without a window scan.
        words = ["".join(rng.choice(ideographs) for _ in range(rng.randint(2, 4))) for _ in range(800)]

        def sentence(n: int) -> str:
            return "".join(rng.choice(words) for _ in range(n)) + "。"

        claims = [sentence(rng.randint(6, 15)) for _ in range(1000)]
        index = RumorIndex(IndexEntry(f"r{i}", "", c) for i, c in enumerate(claims))
        parts: list[str] = []
        while sum(map(len, parts)) < 200_000:
            parts.append(sentence(rng.randint(5, 20)))
        parts[300], parts[3000] = claims[10], claims[20]
        transcript = "".join(parts)[:200_000]
        stats = MatchStats()

        found = index.match({"transcript": transcript}, owners=None, threshold=0.6, stats=stats)

        assert {m.key for m in found if m.score == 1.0} == {"r10", "r20"}
        n = stats.input_grams
        assert n > 190_000
        # One probe per distinct input n-gram (or index n-gram), never one per position and claim.
        assert stats.probes <= min(len(set(ngrams(transcript).grams)), index.size)
        assert stats.postings <= index.size
        assert stats.candidates > 900  # the bound alone rules out few claims here...
        # ...yet the window scans read a small multiple of the input, not input x claims (2e8).
        assert stats.positions <= n
        # Each block step is one operation over all blocks (n / 64 bits) at once; a few per claim n-gram.
        assert stats.block_steps <= 8 * stats.postings
