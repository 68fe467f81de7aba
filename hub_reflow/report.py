"""A verify report: one ``Check`` per rule, with its numbers and a verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

PASS, FAIL, SKIP, INFO, WARN = "pass", "fail", "skip", "info", "warn"  # WARN: fine here, not to publish


def counted(n: int, noun: str) -> str:
    """``n`` and ``noun`` in the number English needs: ``1 key``, ``2 keys``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


@dataclass
class Check:
    name: str
    status: str  # pass | fail | skip | info | warn
    summary: str
    details: dict = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == FAIL


@dataclass
class Report:
    checkpoint: str
    teacher: str | None
    checks: list[Check]

    @property
    def passed(self) -> bool:
        return not any(c.failed for c in self.checks)

    def failed_names(self) -> set[str]:
        return {c.name for c in self.checks if c.failed}

    def get(self, name: str) -> Check:
        return next(c for c in self.checks if c.name == name)

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "teacher": self.teacher, "passed": self.passed,
                "checks": [asdict(c) for c in self.checks]}

    def lines(self) -> list[str]:
        width = max(len(c.name) for c in self.checks)
        return [f"{c.status.upper():4}  {c.name:<{width}}  {c.summary}" for c in self.checks]
