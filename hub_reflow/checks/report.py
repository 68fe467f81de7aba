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

    def measured(self) -> list[str]:
        """What the checks measured: the structure always; fidelity and speed when their checks ran."""
        ran = {c.name for c in self.checks if c.status != SKIP}
        return ["structure"] + [part for part, name in (("fidelity", "fidelity"), ("speed", "speed.same_cost")) if name in ran]

    def verdict(self) -> str:
        """The verdict line's words. A PASS that did not measure fidelity (or speed) says so and why,
        and shows the fidelity verdict the training run recorded (``fidelity.recorded``), when any."""
        if not self.passed:
            return f"FAIL ({', '.join(sorted(self.failed_names()))})"
        measured = self.measured()
        missing = [part for part in ("fidelity", "speed") if part not in measured]
        if not missing:
            return "PASS"
        skipped = next((c for c in self.checks if c.name in ("fidelity", "speed.same_cost") and c.status == SKIP), None)
        why = (skipped.details.get("fix") or skipped.summary) if skipped is not None else "--no-speed given"
        text = f"PASS ({' and '.join(measured)}{' only' if len(measured) == 1 else ''}; {' and '.join(missing)} not measured: {why})"
        recorded = next((c for c in self.checks if c.name == "fidelity.recorded"), None)
        if recorded is not None:
            text += f"; the training run's own measurement: fidelity {recorded.details['verdict']}"
        return text

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "teacher": self.teacher, "passed": self.passed,
                "verdict": self.verdict(), "measured": self.measured(), "checks": [asdict(c) for c in self.checks]}

    def lines(self) -> list[str]:
        width = max(len(c.name) for c in self.checks)
        return [f"{c.status.upper():4}  {c.name:<{width}}  {c.summary}" for c in self.checks]
