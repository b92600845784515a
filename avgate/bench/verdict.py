"""What every benchmark prints at the end: its goal, its figure and whether the figure meets it.

One line each, for example::

    ledger append / plain insert, 16 writers (psycopg): GOAL ≥ 0.5x plain insert | FIGURE 0.74x | MET

A figure without a goal set by its issue says NO GOAL rather than inventing one.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Verdict:
    benchmark: str
    goal: str
    figure: str
    met: bool | None
    """None when no goal is set: the figure is tracked, not judged."""

    @property
    def status(self) -> str:
        if self.met is None:
            return "NO GOAL"
        return "MET" if self.met else "MISSED"

    def line(self) -> str:
        return f"{self.benchmark}: GOAL {self.goal} | FIGURE {self.figure} | {self.status}"


def render_verdicts(verdicts: list[Verdict]) -> str:
    return "\n".join(v.line() for v in verdicts)
