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


def loss_curve(points: list, path: Path) -> None:
    """``points``: [[step, mean loss since the previous point], ...]."""
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
    plt.close(fig)


def chunk_plot(chunks: dict[str, list], path: Path) -> None:
    """``chunks``: sampler name -> one action chunk [chunk_size][action_dim] in real units."""
    plt = _pyplot()
    dims = len(next(iter(chunks.values()))[0])
    fig, axes = plt.subplots(1, dims, figsize=(4 * dims, 3), dpi=100, squeeze=False)
    for d, ax in enumerate(axes[0]):
        for name, chunk in chunks.items():
            ax.plot([row[d] for row in chunk], marker=".", label=name)
        ax.set_xlabel("chunk step")
        ax.set_title(f"action dim {d}")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.suptitle("held-out frame, shared noise")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_card_images(lineage, folder: Path) -> list[str]:
    """Write the images the lineage has data for into ``folder``; return their file names."""
    written = []
    curve = lineage.training.get("loss_curve")
    if curve:
        loss_curve(curve, folder / LOSS_CURVE)
        written.append(LOSS_CURVE)
    example = lineage.evaluation.get("example_chunks")
    if example:
        chunk_plot(example, folder / CHUNKS)
        written.append(CHUNKS)
    return written
