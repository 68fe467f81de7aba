"""The model card's "Closed-loop evaluation" section, from ``reflow_eval.json`` (written by
``hub-reflow eval --record`` beside the lineage): the env, episodes and seeds, the success table with
95% intervals, the paired comparisons, the exact command, the hardware, and its pictures."""

from __future__ import annotations

from pathlib import Path

from ..closed_loop.plots import SUCCESS_PLOT, TRAJECTORY_PLOT, success_plot, trajectory_plot
from ..closed_loop.results import EVAL_NAME, ClosedLoopResults


def read_closed_loop(folder: Path) -> ClosedLoopResults | None:
    """The recorded evaluation of a checkpoint folder, or None (none recorded, or unreadable)."""
    path = Path(folder) / EVAL_NAME
    if not path.is_file():
        return None
    try:
        return ClosedLoopResults.from_file(path)
    except Exception:  # a damaged record is not a reason to refuse a card
        return None


def draw_closed_loop_images(results: ClosedLoopResults, folder: Path) -> list[str]:
    """Write the section's pictures into ``folder``; return their file names."""
    success_plot(results.policies, results.env["id"], Path(folder) / SUCCESS_PLOT)
    names = [SUCCESS_PLOT]
    if results.trajectories:
        trajectory_plot(results.trajectories, results.env.get("scene") or {}, Path(folder) / TRAJECTORY_PLOT,
                        labels=list(results.policies))
        names.append(TRAJECTORY_PLOT)
    return names


def closed_loop_context(results: ClosedLoopResults | None, image_names: tuple[str, ...] | None = None) -> dict | None:
    """The template's ``closed_loop`` value. ``image_names``: the pictures beside the card (None: the
    ones ``draw_closed_loop_images`` would draw)."""
    if results is None:
        return None
    d = results.to_dict()
    drawable = [SUCCESS_PLOT] + ([TRAJECTORY_PLOT] if results.trajectories else [])
    captions = {SUCCESS_PLOT: "closed-loop success rates with 95% Wilson intervals",
                TRAJECTORY_PLOT: "closed-loop paths of each policy from the same start"}
    seeds = results.seeds
    return {
        "env": d["env"]["id"], "episodes": len(seeds), "seeds": f"{seeds[0]} to {seeds[-1]}" if len(seeds) > 1 else str(seeds[0]),
        "table": results.markdown_table(),
        "comparisons": [f"{c['first']} vs {c['second']}: only {c['first']} succeeds in {c['only_first_succeeds']} episodes, "
                        f"only {c['second']} in {c['only_second_succeeds']} (exact McNemar p = {c['mcnemar_p']:.3g})"
                        for c in d["comparisons"]],
        "command": d["settings"].get("command") or "(the Python API: hub_reflow.evaluate_closed_loop)",
        "hardware": ", ".join(f"{k}: {v}" for k, v in d["hardware"].items()),
        "images": [(n, captions[n]) for n in drawable if image_names is None or n in image_names],
    }
