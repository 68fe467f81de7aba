"""The statistics of a paired closed-loop comparison: success rates with 95% Wilson intervals and
the exact McNemar test on the discordant episodes (one policy succeeds, the other fails)."""

from __future__ import annotations

import math

Z95 = 1.959963984540054  # the two-sided 95% normal quantile


def wilson_interval(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval of a binomial rate (95% by default); (0, 1) for no trials."""
    if n <= 0:
        return 0.0, 1.0
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    # At 0 or n successes the bound is exactly 0 or 1 (not 1 - 1e-16).
    return (0.0 if successes == 0 else max(0.0, centre - half)), (1.0 if successes == n else min(1.0, centre + half))


def mcnemar_exact(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value (the sign test on the discordant pairs): the probability,
    under "both policies succeed equally often", of a split at least this uneven. 1.0 without
    discordant pairs."""
    n = only_a + only_b
    if n == 0:
        return 1.0
    k = min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n
    return min(1.0, 2 * tail)


def paired_comparison(a: list[bool], b: list[bool]) -> dict:
    """Episode-by-episode comparison of two policies' outcomes on the same episodes."""
    if len(a) != len(b):
        raise ValueError("paired outcomes must cover the same episodes")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    return {"only_first_succeeds": only_a, "only_second_succeeds": only_b,
            "both_succeed": sum(1 for x, y in zip(a, b) if x and y),
            "both_fail": sum(1 for x, y in zip(a, b) if not x and not y),
            "mcnemar_p": mcnemar_exact(only_a, only_b),
            "difference": (sum(a) - sum(b)) / len(a) if a else 0.0}


def summarize(outcomes: list[bool], rewards: list[float], lengths: list[int], chunk_ms: list[float]) -> dict:
    """One policy's numbers over its episodes."""
    n, k = len(outcomes), sum(bool(o) for o in outcomes)
    lo, hi = wilson_interval(k, n)
    mean = lambda xs: sum(xs) / len(xs) if xs else float("nan")  # noqa: E731
    ordered = sorted(chunk_ms)
    return {"episodes": n, "successes": k, "success_rate": k / n if n else float("nan"),
            "success_ci95": [lo, hi], "mean_reward": mean(rewards), "mean_length": mean(lengths),
            "chunk_latency_ms": {"mean": mean(chunk_ms), "median": ordered[len(ordered) // 2] if ordered else float("nan"),
                                 "chunks": len(chunk_ms)}}


def _spread(values: list[float]) -> dict:
    ordered = sorted(values)
    if not ordered:
        return {"mean": float("nan"), "p95": float("nan"), "n": 0}
    return {"mean": sum(ordered) / len(ordered), "p95": ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))],
            "n": len(ordered)}


def chunk_jumps(actions: list[list[list[float]]], boundaries: list[list[int]], prefix_errors: list[float]) -> dict:
    """How smoothly chunks hand over: per episode, the executed actions ``actions[e][t]`` and the steps
    where a new chunk took over ``boundaries[e]``; the jump at step t >= 1 is mean_i |a_t[i] - a_{t-1}[i]|.
    ``boundary_jump``: at the steps where a new chunk took over (not the episode's first);
    ``within_jump``: at the others; ``prefix_error``: mean and 95th percentile of the RTC chunks' error
    on the committed actions (``rtc.ChunkRecord``)."""
    at, within = [], []
    for acts, starts in zip(actions, boundaries):
        starts = set(starts)
        for t in range(1, len(acts)):
            jump = sum(abs(x - y) for x, y in zip(acts[t], acts[t - 1])) / len(acts[t])
            (at if t in starts else within).append(jump)
    return {"boundary_jump": _spread(at), "within_jump": _spread(within), "prefix_error": _spread(prefix_errors)}
