"""Cost of one training step: a normal SmolVLA fine-tune step vs a reflow step with online pairs
(teacher sampling) vs a reflow step with cached pairs, on the same batch.

    python benchmarks/train_cost.py [--smoke] [--batch-size 32] [--json PATH]
    python benchmarks/train_cost.py --teacher PRETRAINED_DIR --dataset ID --dataset-root ROOT

Each variant runs in its own fresh subprocess (so the CPU peak resident set, ``ru_maxrss``, is that
variant's alone): load, build the batch, ``--warmup`` steps, then ``--repeats`` timed steps; the
median is reported. Rows:

- ``normal``: LeRobot's own ``SmolVLAPolicy.forward`` + backward + optimizer step, optimizer built
  from the config's preset exactly as ``lerobot-train`` does (``get_optim_params``).
- ``reflow_online``: ``ReflowPolicy`` (student + teacher, each with its VLM): teacher sampling at
  ``--teacher-steps`` + student loss + backward + step (hub-reflow's optimizer: trainable params).
- ``reflow_cached``: the same with the pair precomputed (as ``hub-reflow train --pairs`` does: the
  teacher stays loaded, for the final evaluation, but is not run).

Without ``--teacher``, a tiny world (tiny SmolVLM backbone, tiny dataset, a teacher trained for 2
steps by the real ``lerobot-train``; the cost does not depend on how well it was trained) is built
under ``--workdir``; ``--hidden``/``--layers``/``--chunk-size``/``--max-action-dim`` size it.
The markdown table is printed last; the JSON (hardware, torch version, command, rows) is written to
``--json``.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROWS = ("normal", "reflow_online", "reflow_cached")


def _parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny world, batch 4, 1 warm-up, 3 repeats (CI)")
    p.add_argument("--teacher", default=None, help="a SmolVLA pretrained_model/ folder or Hub repo id (else the tiny world)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--dataset-root", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path("outputs/benchmarks/train_cost_world"))
    p.add_argument("--hidden", type=int, default=64, help="tiny world backbone width")
    p.add_argument("--layers", type=int, default=2, help="tiny world backbone depth")
    p.add_argument("--chunk-size", type=int, default=8, help="tiny world chunk size")
    p.add_argument("--max-action-dim", type=int, default=8, help="tiny world max_action_dim / max_state_dim")
    p.add_argument("--batch-size", type=int, default=None, help="default 32 (4 with --smoke)")
    p.add_argument("--teacher-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=None, help="default 2 (1 with --smoke)")
    p.add_argument("--repeats", type=int, default=None, help="default 10 (3 with --smoke)")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--json", type=Path, default=None, help="default outputs/benchmarks/train_cost[_smoke].json")
    p.add_argument("--variant", choices=ROWS, default=None, help=argparse.SUPPRESS)  # child process
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    a.batch_size = a.batch_size or (4 if a.smoke else 32)
    a.warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 2)
    a.repeats = a.repeats or (3 if a.smoke else 10)
    return a


# ---- the child: one variant --------------------------------------------------------------------------


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _rss_now_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def run_variant(variant: str, spec: dict) -> dict:
    import torch
    from lerobot.datasets.lerobot_dataset import LeRobotDataset
    from lerobot.policies.factory import make_pre_post_processors

    from hub_reflow.checkpoint import load_smolvla, read_policy_config, resolve_checkpoint
    from hub_reflow.config import ReflowConfig
    from hub_reflow.policy import ReflowPolicy
    from hub_reflow.train import _make_optimizer

    device = spec["device"]
    cuda = device == "cuda"
    torch.manual_seed(0)
    rss_imports_kb = _rss_now_kb()
    resolved = resolve_checkpoint(spec["teacher"], what="teacher")
    cfg = read_policy_config(resolved.path)
    pre, _ = make_pre_post_processors(cfg, pretrained_path=str(resolved.path),
                                      preprocessor_overrides={"device_processor": {"device": device}})
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata

    meta = LeRobotDatasetMetadata(spec["dataset"], root=spec["dataset_root"])
    ds = LeRobotDataset(spec["dataset"], root=spec["dataset_root"], delta_timestamps=resolve_delta_timestamps(cfg, meta))
    b = spec["batch_size"]
    idx = [(i * 7919) % len(ds) for i in range(b)]  # a fixed spread of frames
    frames = [ds[i] for i in idx]
    raw = {k: torch.stack([f[k] for f in frames]) for k in frames[0] if isinstance(frames[0][k], torch.Tensor)}
    raw["task"] = [f["task"] for f in frames]
    if cuda:
        torch.cuda.reset_peak_memory_stats()

    rcfg = ReflowConfig(teacher_steps=spec["teacher_steps"], batch_size=b, steps=1000)
    teacher_bytes = None
    if variant == "normal":
        policy = load_smolvla(resolved.path, device=device)
        policy.train()
        opt_cfg = cfg.get_optimizer_preset()
        optimizer = opt_cfg.build(policy.get_optim_params())  # what lerobot-train's make_optimizer does
        clip = opt_cfg.grad_clip_norm
        trainable = [p for p in policy.parameters() if p.requires_grad]
        model_bytes = _bytes(policy)

        def step(batch):
            loss, _ = policy.forward(batch)
            loss.backward()
            return loss
    else:
        rp = ReflowPolicy.from_teacher(resolved, rcfg, device=device)
        rp.train()
        optimizer, _, clip, _ = _make_optimizer(rp.trainable_parameters(), cfg, rcfg)
        trainable = rp.trainable_parameters()
        model_bytes, teacher_bytes = _bytes(rp.student), _bytes(rp.teacher)
        if variant == "reflow_cached":
            from hub_reflow.smolvla import policy_inputs

            with torch.no_grad():
                cached = rp.make_pairs(policy_inputs(rp.student, pre(dict(raw))))

        def step(batch):
            if variant == "reflow_cached":
                loss, _ = rp(batch, noise=cached[0], target=cached[1])
            else:
                loss, _ = rp(batch)
            loss.backward()
            return loss

    times, cpu_times = [], []
    rss_before_steps_kb = _rss_now_kb()
    for i in range(spec["warmup"] + spec["repeats"]):
        t0, c0 = time.perf_counter(), time.process_time()
        batch = pre(dict(raw))
        loss = step(batch)
        if clip:
            torch.nn.utils.clip_grad_norm_(trainable, clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if cuda:
            torch.cuda.synchronize()
        if i >= spec["warmup"]:
            times.append(time.perf_counter() - t0)
            cpu_times.append(time.process_time() - c0)
        assert math.isfinite(float(loss)), "non-finite loss"
    peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
    return {
        "name": variant,
        "median_step_ms": 1000 * statistics.median(times),
        "min_step_ms": 1000 * min(times),
        "max_step_ms": 1000 * max(times),
        # CPU time of the process (all its threads) per step: less sensitive than wall time to
        # other work on a shared machine.
        "median_cpu_ms": 1000 * statistics.median(cpu_times),
        "repeats": len(times),
        "peak_rss_mb": peak_kb / 1024,
        # What the variant itself added on top of the interpreter with torch + LeRobot imported
        # (which alone is ~0.8 GB and would hide a tiny model's differences).
        "peak_rss_above_imports_mb": (peak_kb - rss_imports_kb) / 1024,
        "rss_after_imports_mb": rss_imports_kb / 1024,
        "rss_before_steps_mb": rss_before_steps_kb / 1024,
        "trained_model_weights_mb": model_bytes / 2**20,
        "teacher_weights_mb": teacher_bytes / 2**20 if teacher_bytes is not None else 0.0,
        "cuda_peak_allocated_mb": torch.cuda.max_memory_allocated() / 2**20 if cuda else None,
        "final_loss": float(loss),
    }


# ---- the parent ---------------------------------------------------------------------------------------


def _tiny_world(a) -> tuple[str, str, Path]:
    """Build (or reuse) the tiny world under --workdir; its HF cache holds the backbone."""
    from hub_reflow.testing.tiny_world import TINY_REPO_ID, make_tiny_backbone, make_tiny_dataset, publish_backbone, train_teacher

    root = a.workdir / f"h{a.hidden}-l{a.layers}-c{a.chunk_size}-a{a.max_action_dim}"
    backbone, dataset_root = root / "backbone", root / "dataset"
    if not (backbone / "config.json").exists():
        make_tiny_backbone(backbone, hidden_size=a.hidden, num_layers=a.layers)
    publish_backbone(backbone)
    if not (dataset_root / "meta" / "info.json").exists():
        make_tiny_dataset(dataset_root)
    teacher = root / "teacher" / "checkpoints" / "last" / "pretrained_model"
    if not (teacher / "model.safetensors").exists():
        teacher = train_teacher(root / "teacher", dataset_root=dataset_root, steps=2, batch_size=4, extra_args=(
            f"--policy.num_vlm_layers={a.layers}", f"--policy.chunk_size={a.chunk_size}",
            f"--policy.n_action_steps={a.chunk_size}", f"--policy.max_action_dim={a.max_action_dim}",
            f"--policy.max_state_dim={a.max_action_dim}"))
    return str(teacher), TINY_REPO_ID, dataset_root


def _hardware(device: str) -> dict:
    import platform

    import torch

    out = {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
           "torch_threads": torch.get_num_threads(), "platform": platform.platform()}
    try:
        with open("/proc/cpuinfo") as f:
            out["cpu"] = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    if device == "cuda":
        out["gpu"] = torch.cuda.get_device_name(0)
    return out


def markdown(rows: list[dict]) -> str:
    normal = rows[0]
    lines = ["| step | median wall ms | vs normal | median CPU ms | CPU vs normal | peak RSS MB | peak RSS above imports MB | trained weights MB | teacher weights MB | CUDA peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        cuda = f"{r['cuda_peak_allocated_mb']:.0f}" if r["cuda_peak_allocated_mb"] is not None else "n/a"
        lines.append(f"| {r['name']} | {r['median_step_ms']:.1f} | {r['median_step_ms'] / normal['median_step_ms']:.2f} | "
                     f"{r['median_cpu_ms']:.1f} | {r['median_cpu_ms'] / normal['median_cpu_ms']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_rss_above_imports_mb']:.1f} | {r['trained_model_weights_mb']:.1f} | "
                     f"{r['teacher_weights_mb']:.1f} | {cuda} |")
    return "\n".join(lines)


def evaluate_targets(rows: list[dict], device: str) -> dict:
    by = {r["name"]: r for r in rows}
    n, on, ca = by["normal"], by["reflow_online"], by["reflow_cached"]
    key = "cuda_peak_allocated_mb" if device == "cuda" else "peak_rss_above_imports_mb"
    budget = n[key] + on["teacher_weights_mb"]
    worst = max(on[key], ca[key])
    ratio = ca["median_step_ms"] / n["median_step_ms"]
    cpu_ratio = ca["median_cpu_ms"] / n["median_cpu_ms"]
    return {
        "memory": {"target": f"reflow peak memory ({key}) <= normal fine-tune's + teacher's weights",
                   "met": worst <= budget,
                   "detail": f"reflow online {on[key]:.1f} MB, cached {ca[key]:.1f} MB; budget {n[key]:.1f} + {on['teacher_weights_mb']:.1f} = {budget:.1f} MB"},
        "cached_time": {"target": "cached-pair step time within 10% of a normal step",
                        "met": ratio <= 1.10,
                        "detail": f"{ca['median_step_ms']:.1f} ms vs {n['median_step_ms']:.1f} ms = {ratio:.2f}x; "
                                  f"online {on['median_step_ms']:.1f} ms = {on['median_step_ms'] / n['median_step_ms']:.2f}x; "
                                  f"CPU time: cached {cpu_ratio:.2f}x, online {on['median_cpu_ms'] / n['median_cpu_ms']:.2f}x"},
    }


def main(argv=None) -> int:
    a = _parse(argv)
    if a.variant:  # child
        print("RESULT " + json.dumps(run_variant(a.variant, json.loads(a.spec))), flush=True)
        return 0
    if a.teacher is None:
        # The tiny backbone lives in a private HF cache under the workdir (before huggingface_hub loads).
        a.workdir = a.workdir.resolve()
        os.environ.setdefault("HF_HOME", str(a.workdir / "hf_home"))
        os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    device = a.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if a.teacher is None:
        teacher, dataset, dataset_root = _tiny_world(a)
        size = f"tiny world: backbone {a.hidden} wide x {a.layers} layers, chunk {a.chunk_size}, max_action_dim {a.max_action_dim}"
    else:
        if not a.dataset:
            print("train_cost: error: --teacher needs --dataset", file=sys.stderr)
            return 2
        teacher, dataset, dataset_root, size = a.teacher, a.dataset, a.dataset_root, f"teacher {a.teacher}"
    spec = {"teacher": teacher, "dataset": dataset, "dataset_root": str(dataset_root) if dataset_root else None,
            "batch_size": a.batch_size, "teacher_steps": a.teacher_steps, "warmup": a.warmup, "repeats": a.repeats,
            "device": device}
    rows = []
    for variant in ROWS:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--spec", json.dumps(spec)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode != 0 or line is None:
            print(r.stderr[-4000:], file=sys.stderr)
            print(f"train_cost: error: variant {variant} failed (exit {r.returncode})", file=sys.stderr)
            return 1
        rows.append(json.loads(line[len("RESULT "):]))
        print(f"{variant}: {rows[-1]['median_step_ms']:.1f} ms, peak RSS {rows[-1]['peak_rss_mb']:.0f} MB", file=sys.stderr)
    targets = evaluate_targets(rows, device)
    out = {
        "benchmark": "train_cost",
        "hardware": _hardware(device),
        "device": device,
        "torch": torch.__version__,
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(["train_cost.py", *argv]),
        "size": size,
        "batch_size": a.batch_size, "teacher_steps": a.teacher_steps, "warmup": a.warmup, "repeats": a.repeats,
        "smoke": a.smoke,
        "rows": rows,
        "targets": targets,
    }
    path = a.json or Path("outputs/benchmarks") / ("train_cost_smoke.json" if a.smoke else "train_cost.json")
    path.parent.mkdir(parents=True, exist_ok=True)
    from hub_reflow.safeio import dumps

    path.write_text(dumps(out, indent=2))
    for t in targets.values():
        print(f"- {t['target']}: {'met' if t['met'] else 'NOT met'} ({t['detail']})")
    print(f"{size}; batch {a.batch_size}; device {device}; JSON: {path}")
    print()
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
