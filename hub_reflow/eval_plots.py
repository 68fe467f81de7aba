"""The closed-loop evaluation's pictures for the model card: success rates with their 95% Wilson
intervals (any env) and, for planar worlds, the paths of each policy from the same start."""

from __future__ import annotations

from pathlib import Path

SUCCESS_PLOT = "closed_loop_success.png"
TRAJECTORY_PLOT = "closed_loop_trajectories.png"


def _figure(size):
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt, *plt.subplots(figsize=size, dpi=100)


def success_plot(policies: dict, env_id: str, path: Path) -> None:
    """``policies``: label -> {"success_rate", "success_ci95", "episodes"}."""
    plt, fig, ax = _figure((5, 3))
    labels = list(policies)
    rates = [100 * policies[k]["success_rate"] for k in labels]
    lo = [r - 100 * policies[k]["success_ci95"][0] for r, k in zip(rates, labels)]
    hi = [100 * policies[k]["success_ci95"][1] - r for r, k in zip(rates, labels)]
    colors = ["tab:green" if k.startswith("student") else "tab:blue" for k in labels]
    ax.bar(labels, rates, yerr=[lo, hi], capsize=4, color=colors)
    ax.set_ylim(0, 105)
    ax.set_ylabel("success (%)")
    n = next(iter(policies.values()))["episodes"] if policies else 0
    ax.set_title(f"{env_id}: {n} paired episodes, 95% Wilson intervals", fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def trajectory_plot(trajectories: dict, scene: dict, path: Path) -> None:
    """``trajectories``: label -> [[x, y], ...] of episode 0 (the same start and seeds for all);
    ``scene``: what the env says to draw (``circles`` [[x, y, r]], ``goal_y``)."""
    plt, fig, ax = _figure((4, 4))
    for x, y, r in scene.get("circles", []):
        ax.add_patch(plt.Circle((x, y), r, color="black", alpha=0.8))
    if scene.get("goal_y") is not None:
        ax.axhline(scene["goal_y"], color="tab:green", ls="--", lw=1, label="goal")
    for label, points in trajectories.items():
        ax.plot([p[0] for p in points], [p[1] for p in points], marker=".", ms=3, label=label)
    ax.set_aspect("equal")
    ax.set_xlim(-1.2, 1.2)
    ax.set_ylim(-1.2, 1.0)
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("episode 0: the same start and seeds", fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
