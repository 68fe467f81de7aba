"""The model card's images, drawn from the lineage file alone (so any saved checkpoint can redraw them)."""

from __future__ import annotations

from pathlib import Path

LOSS_CURVE = "loss_curve.png"
CHUNKS = "teacher_vs_student.png"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def loss_curve(points: list, path: Path) -> list[str]:
    """``points``: [[step, mean loss since the previous point], ...]. Returns the title as drawn."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
    ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", ms=2)
    ax.set_xlabel("step")
    ax.set_ylabel("reflow loss")
    ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.set_title("reflow training loss")
    fig.tight_layout()
    fig.savefig(path)
    titles = [ax.get_title()]
    plt.close(fig)
    return titles


def action_labels(names, dims: int) -> list[str]:
    """The action dims' names as the dataset's ``action`` feature gives them (a list, or LeRobot v2's
    ``{"motors": [...]}``) when they name all ``dims`` dims; ``action dim i`` otherwise."""
    if isinstance(names, dict):
        names = [n for group in names.values() if isinstance(group, list) for n in group]
    if isinstance(names, (list, tuple)) and len(names) == dims and all(isinstance(n, str) and n.strip() for n in names):
        return list(names)
    return [f"action dim {d}" for d in range(dims)]


def example_frame(frames_from: str | None) -> str:
    """What the example chunk's frame is, from the measurement's ``frames_from``: a held-out frame only
    when episodes were held out."""
    if frames_from and frames_from.startswith("held-out"):
        return "a held-out frame"
    if frames_from and frames_from.startswith("training"):
        return "a training frame (no episode was held out)"
    return "one frame"


def chunk_plot(chunks: dict[str, list], path: Path, action_names=None, frames_from: str | None = None) -> list[str]:
    """``chunks``: sampler name -> one action chunk [chunk_size][action_dim] in real units;
    ``action_names``: the dataset's names of the action dims (see :func:`action_labels`);
    ``frames_from``: where the measured frames came from (the lineage's ``evaluation.frames_from``).
    Returns the figure's title, then the panels' titles, as drawn."""
    plt = _pyplot()
    dims = len(next(iter(chunks.values()))[0])
    fig, axes = plt.subplots(1, dims, figsize=(4 * dims, 3), dpi=100, squeeze=False)
    for d, (ax, label) in enumerate(zip(axes[0], action_labels(action_names, dims))):
        for name, chunk in chunks.items():
            ax.plot([row[d] for row in chunk], marker=".", label=name)
        ax.set_xlabel("chunk step")
        ax.set_title(label)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    suptitle = fig.suptitle(f"{example_frame(frames_from)}, shared noise")
    fig.tight_layout()
    fig.savefig(path)
    titles = [suptitle.get_text(), *(ax.get_title() for ax in axes[0])]
    plt.close(fig)
    return titles


def draw_card_images(lineage, folder: Path) -> dict[str, list[str]]:
    """Write the images the lineage has data for into ``folder``; return {file name: its panels' titles}."""
    written = {}
    curve = lineage.training.get("loss_curve")
    if curve:
        written[LOSS_CURVE] = loss_curve(curve, folder / LOSS_CURVE)
    example = lineage.evaluation.get("example_chunks")
    if example:
        written[CHUNKS] = chunk_plot(example, folder / CHUNKS, lineage.evaluation.get("action_names"),
                                     lineage.evaluation.get("frames_from"))
    return written
