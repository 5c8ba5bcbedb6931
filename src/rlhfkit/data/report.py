"""What a load read: the source, the split, how many rows, and the records it skipped.

With ``on_bad_record: skip`` a record that fails validation (a ``DataError`` at a record) is
dropped instead of stopping the run; real downloads (hh-rlhf's identical pairs, a cut-off last
line) have a few. The count and the first references go to the log and to summary.json.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Iterable

BAD_RECORD_POLICIES = ("skip", "error")


@dataclass
class LoadReport:
    """Filled in by the ``load_*`` functions when passed as ``report=``."""

    source: str = ""
    split: str | None = None  # None: a source without splits (a single file)
    rows: int = 0  # records read, bad ones included
    bad: int = 0  # records skipped
    examples: list[str] = field(default_factory=list)  # the first skipped, "file:line: field: reason"
    MAX_EXAMPLES: ClassVar[int] = 5

    def add(self, error: Exception) -> None:
        self.bad += 1
        if len(self.examples) < self.MAX_EXAMPLES:
            self.examples.append(str(error))

    def summary(self) -> dict:
        return {"bad_records": self.bad, "bad_record_examples": list(self.examples)}

    def describe(self, role: str) -> list[str]:
        """Log lines: 'data: prefs/ split 'train': 20 rows', then one per skipped example."""
        where = f"{self.source} split '{self.split}'" if self.split else self.source
        head = f"{role}: {where}: {self.rows} rows"
        if not self.bad:
            return [head]
        head += f", {self.bad} bad record{'s' * (self.bad != 1)} skipped (on_bad_record: skip)"
        more = [f"  ... and {self.bad - len(self.examples)} more"] if self.bad > len(self.examples) else []
        return [head] + [f"  skipped {e}" for e in self.examples] + more


def bad_record_summary(reports: Iterable[LoadReport]) -> dict:
    """summary.json's `bad_records` (all sources) and `bad_record_examples` (the first five)."""
    reports = list(reports)
    examples = [e for r in reports for e in r.examples][:LoadReport.MAX_EXAMPLES]
    return {"bad_records": sum(r.bad for r in reports), "bad_record_examples": examples}
