"""The results of a closed-loop evaluation: per-policy numbers, per-episode outcomes, the paired
comparisons, the table, and the strict JSON written by ``--json`` and ``--record``
(``reflow_eval.json``, which the model card reads)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from ..safeio import dumps, write_json
from .stats import paired_comparison

EVAL_NAME = "reflow_eval.json"  # beside reflow_lineage.json in the checkpoint folder (--record)
FORMAT_VERSION = 1


@dataclass
class ClosedLoopResults:
    """``policies``: label (``student@1``, ``teacher@10``) -> its numbers (``stats.summarize``)
    plus ``role``, ``checkpoint``, ``num_steps`` and per-episode ``outcomes``, ``rewards``, ``lengths``."""

    env: dict  # id, kind, options, max_steps
    settings: dict  # episodes, seed, device, rename_map, command
    seeds: list[int]  # env seed (and torch seed) of each episode
    policies: dict[str, dict]
    versions: dict = field(default_factory=dict)
    hardware: dict = field(default_factory=dict)
    trajectories: dict = field(default_factory=dict)  # label -> [[x, y], ...] of episode 0 (planar states only)

    @property
    def success_rates(self) -> dict[str, float]:
        return {label: p["success_rate"] for label, p in self.policies.items()}

    def _first(self, role: str) -> str | None:
        return next((label for label, p in self.policies.items() if p["role"] == role), None)

    @property
    def student(self) -> str | None:
        """The label of the student at its own step count (the first student row)."""
        return self._first("student")

    @property
    def teacher(self) -> str | None:
        """The label of the teacher at its own step count (the first teacher row)."""
        return self._first("teacher")

    @property
    def student_success_rate(self) -> float | None:
        """The success rate of the student at its own step count (None: no student row)."""
        return self.policies[self.student]["success_rate"] if self.student else None

    @property
    def teacher_success_rate(self) -> float | None:
        """The success rate of the teacher at its own step count (None: no teacher row)."""
        return self.policies[self.teacher]["success_rate"] if self.teacher else None

    def comparisons(self) -> list[dict]:
        """Paired comparisons: every student row against every teacher row (without a student, the
        teacher at its own steps against its other rows)."""
        firsts = [label for label, p in self.policies.items() if p["role"] == "student"] or [self.teacher]
        out = []
        for a in firsts:
            for b in self.policies:
                if b != a and self.policies[b]["role"] == "teacher":
                    out.append({"first": a, "second": b,
                                **paired_comparison(self.policies[a]["outcomes"], self.policies[b]["outcomes"])})
        return out

    def to_dict(self) -> dict:
        student, teacher = self.student, self.teacher
        episodes = [{"index": i, "seed": s, "success": {label: p["outcomes"][i] for label, p in self.policies.items()}}
                    for i, s in enumerate(self.seeds)]
        return {
            "format_version": FORMAT_VERSION,
            "env": self.env,
            "settings": self.settings,
            "success_rates": self.success_rates,
            "student": student,
            "teacher": teacher,
            "student_success_rate": self.student_success_rate,
            "teacher_success_rate": self.teacher_success_rate,
            "policies": self.policies,
            "comparisons": self.comparisons(),
            "episodes": episodes,
            "seeds": self.seeds,
            "versions": self.versions,
            "hardware": self.hardware,
            "trajectories": self.trajectories,
        }

    @classmethod
    def from_dict(cls, data: dict) -> ClosedLoopResults:
        return cls(env=data["env"], settings=data["settings"], seeds=data["seeds"], policies=data["policies"],
                   versions=data.get("versions", {}), hardware=data.get("hardware", {}),
                   trajectories=data.get("trajectories", {}))

    @classmethod
    def from_file(cls, path: Path | str) -> ClosedLoopResults:
        return cls.from_dict(json.loads(Path(path).read_text()))

    def write(self, path: Path | str) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        write_json(path, self.to_dict(), indent=2)  # strict JSON: a NaN is null

    def to_json(self) -> str:
        return dumps(self.to_dict(), indent=2)

    def table(self) -> str:
        """The comparison as text, one line per row and per paired comparison (``print(results.table())``)."""
        n = len(self.seeds)
        seeds = f"{self.seeds[0]}..{self.seeds[-1]}" if n > 1 else str(self.seeds[0])
        lines = [f"env: {self.env['id']}  episodes: {n} (paired: env and torch seeds {seeds})",
                 f"{'policy':<26}{'success':>16}  {'95% CI':<15}{'reward':>8}{'length':>8}{'chunk ms':>10}"]
        for label, p in self.policies.items():
            lo, hi = p["success_ci95"]
            lines.append(f"{label:<26}{p['successes']:>6}/{p['episodes']:<3} {100 * p['success_rate']:5.1f}%  "
                         f"[{100 * lo:4.1f}, {100 * hi:5.1f}]  {p['mean_reward']:>7.2f} {p['mean_length']:>7.1f} "
                         f"{p['chunk_latency_ms']['median']:>9.1f}")
        for c in self.comparisons():
            lines.append(f"paired {c['first']} vs {c['second']}: only {c['first']} succeeds {c['only_first_succeeds']}, "
                         f"only {c['second']} {c['only_second_succeeds']}, exact McNemar p = {c['mcnemar_p']:.3g}")
        if self.settings.get("no_teacher"):
            lines.append(f"note: {self.settings['no_teacher']}")
        return "\n".join(lines)

    def handover_table(self) -> str:
        """How chunks hand over, per row (text; empty without rows that recorded it): the jump |a_t - a_{t-1}| (mean over action
        dimensions, the env's units) where a new chunk takes over and within chunks (mean, 95th
        percentile), and under RTC the new chunks' error on the committed actions (normalised units)."""
        lines = [f"{'policy':<26}{'jump at handover':>20}{'jump within chunk':>20}{'committed error':>18}",
                 f"{'':<26}{'mean':>10}{'p95':>10}{'mean':>10}{'p95':>10}{'mean':>9}{'p95':>9}"]
        for label, p in self.policies.items():
            if "boundary_jump" not in p:
                continue
            b, w, e = p["boundary_jump"], p["within_jump"], p["prefix_error"]
            err = f"{e['mean']:>9.4f}{e['p95']:>9.4f}" if e["n"] else f"{'-':>9}{'-':>9}"
            lines.append(f"{label:<26}{b['mean']:>10.4f}{b['p95']:>10.4f}{w['mean']:>10.4f}{w['p95']:>10.4f}{err}")
        return "\n".join(lines) if len(lines) > 2 else ""

    def markdown_table(self) -> str:
        """The success table for the model card and the README."""
        rows = ["| policy | Euler steps | success | 95% CI (Wilson) | mean reward | mean length | chunk latency (ms, median) |",
                "|---|---|---|---|---|---|---|"]
        for label, p in self.policies.items():
            lo, hi = p["success_ci95"]
            rows.append(f"| {label} | {p['num_steps']} | {p['successes']}/{p['episodes']} ({100 * p['success_rate']:.1f}%) "
                        f"| {100 * lo:.1f}% to {100 * hi:.1f}% | {p['mean_reward']:.2f} | {p['mean_length']:.1f} "
                        f"| {p['chunk_latency_ms']['median']:.1f} |")
        return "\n".join(rows)
