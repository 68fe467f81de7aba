"""The closed-loop evaluation's pictures for the model card: success rates with their 95% Wilson
intervals (any env) and, for planar worlds, the paths of each policy from the same start; and the
frames of ``--videos``, enlarged and labelled. Each policy row has one colour in every picture
(``row_colors``): students in greens, teachers in blues and warm colours, none the goal line's."""

from __future__ import annotations

import math
from pathlib import Path

SUCCESS_PLOT = "closed_loop_success.png"
TRAJECTORY_PLOT = "closed_loop_trajectories.png"
STUDENT_COLORS = ("#2ca02c", "#17becf", "#bcbd22")  # matplotlib's tab:green, tab:cyan, tab:olive
TEACHER_COLORS = ("#1f77b4", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#d62728")  # tab:blue, orange, purple, ...
GOAL_COLOR = "#000000"  # the goal line: black, like the obstacles, never a policy's colour
VIDEO_MIN_SIDE = 256  # --videos frames are enlarged (nearest) to at least this many pixels a side


def row_colors(labels) -> dict[str, str]:
    """One colour per policy row, the same in every picture: students (``student@k``) take the
    greens in row order, the other rows (teachers) the rest."""
    colors, used = {}, {"student": 0, "teacher": 0}
    for label in labels:
        kind = "student" if label.startswith("student") else "teacher"
        palette = STUDENT_COLORS if kind == "student" else TEACHER_COLORS
        colors[label] = palette[used[kind] % len(palette)]
        used[kind] += 1
    return colors


def _figure(size):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=size, dpi=100)


def _hex(color) -> str:
    from matplotlib.colors import to_hex

    return to_hex(color)


def success_plot(policies: dict, env_id: str, path: Path) -> dict[str, str]:
    """``policies``: label -> {"success_rate", "success_ci95", "episodes"}. Returns each bar's colour
    as drawn."""
    plt, fig, ax = _figure((5, 3))
    labels = list(policies)
    rates = [100 * policies[k]["success_rate"] for k in labels]
    lo = [r - 100 * policies[k]["success_ci95"][0] for r, k in zip(rates, labels)]
    hi = [100 * policies[k]["success_ci95"][1] - r for r, k in zip(rates, labels)]
    colors = row_colors(labels)
    bars = ax.bar(labels, rates, yerr=[lo, hi], capsize=4, color=[colors[k] for k in labels])
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    n = next(iter(policies.values()))["episodes"] if policies else 0
    ax.set_title(f"{env_id}: {n} paired episodes, 95% Wilson intervals", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    drawn = {k: _hex(bar.get_facecolor()) for k, bar in zip(labels, bars.patches)}
    plt.close(fig)
    return drawn


def trajectory_plot(trajectories: dict, scene: dict, path: Path, labels=None) -> dict:
    """``trajectories``: label -> [[x, y], ...] of episode 0 (the same start and seeds for all);
    ``scene``: what the env says to draw (``circles`` [[x, y, r]], ``goal_y``); ``labels``: every
    policy row in table order (the colours follow it; default: the trajectories'). Students' paths are
    drawn above the teachers'. Returns {"rows": label -> (colour, z-order), "goal": colour} as drawn."""
    plt, fig, ax = _figure((4, 4))
    colors = row_colors(labels or list(trajectories))
    for x, y, r in scene.get("circles", []):
        ax.add_patch(plt.Circle((x, y), r, color="black", alpha=0.8))
    goal = None
    if scene.get("goal_y") is not None:
        goal = ax.axhline(scene["goal_y"], color=GOAL_COLOR, ls="--", lw=1, label="goal")
    lines = {}
    for label, points in trajectories.items():
        student = label.startswith("student")
        lines[label], = ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", ms=3, label=label,
                                color=colors[label], zorder=3 if student else 2, lw=2 if student else 1.2)
    ax.set_aspect("equal")
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.0)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("episode 0: the same start and seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    drawn = {"rows": {k: (_hex(line.get_color()), line.get_zorder()) for k, line in lines.items()},
             "goal": _hex(goal.get_color()) if goal is not None else None}
    plt.close(fig)
    return drawn


def labelled_frames(frames, lines: list[str], min_side: int = VIDEO_MIN_SIDE) -> list:
    """Video frames (H, W, 3 uint8) enlarged by nearest neighbour to at least ``min_side`` pixels a
    side, under a black banner with ``lines`` of white text (the policy row, the episode, its outcome)."""
    import numpy as np
    from PIL import Image, ImageDraw, ImageFont

    h, w = frames[0].shape[:2]
    scale = max(1, math.ceil(min_side / min(h, w)))
    try:
        font = ImageFont.load_default(size=14)
    except TypeError:  # Pillow without FreeType: the bitmap font
        font = ImageFont.load_default()
    line_h = 18
    banner = Image.new("RGB", (w * scale, line_h * len(lines) + 6 + (line_h * len(lines) + 6) % 2), "black")
    draw = ImageDraw.Draw(banner)
    for i, text in enumerate(lines):
        draw.text((4, 3 + i * line_h), text, fill="white", font=font)
    top = np.asarray(banner)
    return [np.concatenate([top, np.asarray(f).repeat(scale, axis=0).repeat(scale, axis=1)], axis=0) for f in frames]
