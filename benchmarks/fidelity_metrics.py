"""``fidelity.py``'s measurements on a tiny world's held-out episodes: the true modes of each chunk
(the world's scripted expert from the frame's state, on either side), the mode-hit rate, and the
straightness of a sampled path; and its picture (the first action dim's distributions)."""

from __future__ import annotations

from pathlib import Path

HOLDOUT = 4
HIT = 0.25  # real action units; the two modes are 2 apart in the first dim
FINE_TIMES = [1.0 - i / 10 for i in range(10)]
DECAY = 0.9  # p_y <- p_y - 0.1 p_y (tiny_world.make_tiny_dataset)


def true_modes(spec, states, frame_index, episode_length, chunk: int):
    """The two true chunks (2, B, chunk, action_dim) and the valid-position mask (B, chunk)."""
    import numpy as np
    import torch

    modes = np.zeros((2, len(states), chunk, spec.action_dim), dtype=np.float32)
    for b, state in enumerate(states.numpy()):
        for j in range(chunk):
            s = state.copy()
            s[1] = state[1] * DECAY**j
            for i, d in enumerate((1.0, -1.0)):
                modes[i, b, j] = spec.action(d, s)
    j = torch.arange(chunk)
    valid = (frame_index[:, None] + j[None]) < episode_length[:, None]
    return torch.from_numpy(modes), valid


def held_out(spec, dataset_root: Path, chunk_size: int, stride: int = 1):
    """A world's held-out episodes (the last ``HOLDOUT``, as hub-reflow train holds them out): the
    dataset, the index of their first frame, every ``stride``-th frame's index, those frames' raw
    observation batch, and their true modes and valid mask (``true_modes``; ``None`` for the
    closed-loop world, whose expert is not ``spec.action``)."""
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset

    from hub_reflow.checks.fidelity import observation_batch

    ds = LeRobotDataset(spec.repo_id, root=dataset_root)
    meta = ds.meta.episodes
    start = int(meta["dataset_from_index"][ds.meta.total_episodes - HOLDOUT])
    idx = list(range(start, len(ds)))[::stride]
    raw = observation_batch(ds, idx)
    if spec.closed_loop:
        return ds, start, idx, raw, None, None
    frames = [ds[i] for i in idx]
    ep_len = {int(e): int(t - f) for e, f, t in zip(meta["episode_index"], meta["dataset_from_index"], meta["dataset_to_index"],
                                                     strict=True)}
    modes, valid = true_modes(spec, raw["observation.state"].float(), torch.tensor([int(f["frame_index"]) for f in frames]),
                              torch.tensor([ep_len[int(f["episode_index"])] for f in frames]), chunk_size)
    return ds, start, idx, raw, modes, valid


def mode_metrics(chunks: torch.Tensor, modes: torch.Tensor, valid: torch.Tensor) -> dict:
    """Distance to the nearest true mode per frame, its mean, and the hit rate."""
    err = ((chunks[None].float() - modes) ** 2).sum(-1)  # (2, B, chunk)
    v = valid[None].float()
    dist = ((err * v).sum(-1) / (chunks.shape[-1] * v.sum(-1))).sqrt()  # RMS over valid positions and dims
    nearest, which = dist.min(0)
    return {"mode_distance": float(nearest.mean()), "mode_hit_rate": float((nearest < HIT).float().mean()),
            "side_plus_share": float((which == 0).float().mean())}


def path_at(states: list[torch.Tensor], t: float) -> torch.Tensor:
    """The sampled path (Euler states at t = 1, 1 - 1/K, ..., 0 joined by segments) at time t."""
    k = len(states) - 1
    pos = (1.0 - t) * k  # 0 at t = 1
    i = min(int(pos), k - 1)
    w = pos - i
    return (1 - w) * states[i] + w * states[i + 1]


def straightness(policy, inputs, noise: torch.Tensor, steps: int, action_dim: int) -> dict:
    import torch

    from hub_reflow import flow
    from hub_reflow.smolvla import velocity_field

    v = velocity_field(policy, inputs)
    path = flow.euler_path(v, noise, steps)
    s_euler = flow.straightness(path, action_dim)
    straight = flow.target_velocity(path.states[0], path.result)[..., :action_dim]
    terms = []
    for t in FINE_TIMES:
        t_vec = torch.full((noise.shape[0],), t, dtype=torch.float32, device=noise.device)
        vel = v(path_at(path.states, t), t_vec)[..., :action_dim]
        terms.append(((straight - vel) ** 2).flatten(1).sum(-1))
    return {"S_euler": float(s_euler.mean()), "S_fine": float(torch.stack(terms).mean(0).mean())}


def plot(chunks: dict, modes, valid, path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for name, c in chunks.items():
        if "other noise" in name:
            continue
        x = c[..., 0][valid].flatten().numpy()
        ax.hist(x, bins=60, range=(-2, 2), histtype="step", label=name)
    for d in (1, -1):
        ax.axvline(d, color="k", lw=0.8, ls=":")
    ax.set_xlabel("x action (real units); true modes at +-1")
    ax.set_ylabel("count (valid chunk positions)")
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
