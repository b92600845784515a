"""The legal bases avgate cites, in one place.

Ledger entries, incidents and enforcement actions say why they happened by
citing an article. Every citation is built here, so a regulator's search for
"NAVIS-2019 Art. 14" finds every entry that cites it, spelled one way.
NAVIS-2019 is the Regulations on the Management of Network Audio and Video
Information Services (2019); PIPL-2021 the Personal Information Protection Law.
"""

from __future__ import annotations

from dataclasses import dataclass

NAVIS = "NAVIS-2019"
PIPL = "PIPL-2021"


@dataclass(frozen=True)
class LegalBasis:
    """One article (and optionally paragraph) of one instrument, with a note on why it applies."""

    instrument: str
    article: str
    paragraph: str = ""
    note: str = ""

    def cite(self) -> str:
        """'NAVIS-2019 Art. 12(2)': the form ledger entries and reports carry."""
        text = f"{self.instrument} Art. {self.article}"
        return f"{text}({self.paragraph})" if self.paragraph else text

    def to_json(self) -> dict[str, str]:
        return {"instrument": self.instrument, "article": self.article, "paragraph": self.paragraph, "note": self.note}

    @classmethod
    def from_json(cls, raw: dict[str, str]) -> LegalBasis:
        return cls(raw["instrument"], raw["article"], raw.get("paragraph", ""), raw.get("note", ""))


def navis(article: str, paragraph: str = "", note: str = "") -> LegalBasis:
    """An article of the 2019 audio/video regulations."""
    return LegalBasis(NAVIS, article, paragraph, note)


def cite_navis(*articles: str) -> str:
    """'NAVIS-2019 Art. 7, 8' for an entry that rests on several articles at once."""
    return f"{NAVIS} Art. {', '.join(articles)}"


# The citations ledger entries carry, by the duty they record.
ART_7 = cite_navis("7")  # content security management, minors
ART_8 = cite_navis("8")  # real identity before publishing
ART_7_8 = cite_navis("7", "8")  # eligibility of minors to publish
ART_10 = cite_navis("10")  # security assessments of new features
ART_12 = cite_navis("12")  # identification, stopping transmission, records, reports
ART_12_14 = cite_navis("12-14")  # evidence kept for incidents
ART_13 = cite_navis("13")  # rumour refutation
ART_14 = cite_navis("14")  # service agreement and enforcement
ART_17 = cite_navis("17")  # supervision: logs and data given to regulators
