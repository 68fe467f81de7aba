"""Cost of one training step: a normal SmolVLA fine-tune step vs a reflow step with online pairs
(teacher sampling) vs a reflow step with cached pairs, on the same batch: time, memory, aten operator
counts (any device: a hardware-free proxy for kernel launches) and, with --profile, a profiler summary.

    python benchmarks/train_cost.py [--smoke] [--batch-size 32] [--json PATH]
    python benchmarks/train_cost.py --real-size [--batch-size 8,64] [--profile]
    python benchmarks/train_cost.py --teacher PRETRAINED_DIR --dataset ID --dataset-root ROOT

Each variant runs in its own fresh subprocess (so the CPU peak resident set, ``ru_maxrss``, is that
variant's alone; with several batch sizes it is the process peak so far): load, then per batch size
build the batch, ``--warmup`` steps, ``--repeats`` timed steps (the median is reported), one more
step under an operator counter, and with ``--profile`` ``--profile-steps`` steps under
``torch.profiler``. Rows (variant x batch size):

- ``normal``: LeRobot's own ``SmolVLAPolicy.forward`` + backward + grad clipping + optimizer step,
  optimizer built from the config's preset exactly as ``lerobot-train`` does (``get_optim_params``).
- ``reflow_online``: ``ReflowPolicy`` (student + teacher, each with its VLM): teacher sampling at
  ``--teacher-steps`` on the fast path (``hub_reflow/fastpath.py``: CUDA graphs on CUDA) + student
  loss + backward + step (hub-reflow's optimizer over fp32 master copies of the bf16 trainable
  params, the gradient and weight copies counted in the optimizer phase, as ``hub-reflow train``).
- ``reflow_cached``: the same with the pair precomputed (as ``hub-reflow train --pairs`` does: the
  teacher stays loaded, for the final evaluation, but is not run). The pair is made with LeRobot's
  eager sampling: ``train --pairs`` reads its pairs from a file and never captures a CUDA graph in
  the training process, and a process that has captured one paid more per host operation in the
  first H200 run (issue 18; docs/results.md#gpu-runs; ``--capture-effect`` measures that on LeRobot's
  normal step).
- ``reflow_online_eager`` (on CUDA, or with ``--variants``): online pairs with LeRobot's eager
  ``sample_actions`` (``--no-cuda-graphs``).
- ``reflow_cached_sr``, ``reflow_cached_bf16`` (with ``--variants``; first batch size only: memory
  rows): the cached step with the other weight updates of ``ReflowConfig.update``, AdamW with
  stochastic rounding straight on the bf16 weights (``training/optimizer.py``), and LeRobot's AdamW on the
  bf16 weights (rounding to nearest), neither with fp32 masters.
- ``reflow_shared`` (with ``--noises-per-frame M`` > 1): online pairs with M noises per observation,
  the VLM prefix once per observation for teacher and student (docs/reflow.md#many-noises-per-observation):
  ``batch x M`` training rows. Compared with M separate ``reflow_online`` steps of the same batch
  (the same number of (observation, noise) rows), in its own table and target.

Per row, besides time and memory: ``flops_per_step`` (torch's ``FlopCounterMode``: the matmuls,
convolutions and attention of forward, backward and optimizer; a hardware-free measure of the
arithmetic), ``aten_ops_per_step`` (every aten operator dispatched in one step:
preprocessor, forward, autograd's backward, clipping and optimizer; split by phase), and
``item_calls_per_step`` (``aten::_local_scalar_dense``: a device-to-host read, a sync on CUDA); on
CUDA ``cuda_syncs_per_step`` (CUDA's sync debug mode). ``--profile`` adds, per row, the top operators
by self CPU time and (CUDA) by self device time, kernel launches, CUDA-graph launches and GPU kernels
per step, the wall time of each phase with the device synchronised between phases, and
``host_cost_vs_normal``: the normal step's aten operators priced at the row's own host cost per
call over their cost in the normal step (1.0: each shared operator costs the host the same; a
mode, hook or process state that makes every operator dearer shows here, whatever the op count).
``--capture-effect`` (CUDA) times the normal step in its own process before and after a teacher
sampling graph is captured there (after the warm-up alone, after the capture, after freeing it).

Worlds: without ``--teacher``, a tiny world (tiny SmolVLM backbone, tiny dataset, a teacher trained
for 2 steps by the real ``lerobot-train``; the cost does not depend on how well it was trained) is
built under ``--workdir``; ``--hidden``/``--layers``/``--chunk-size``/``--max-action-dim`` size it.
``--real-size``: a teacher with the ``smolvla_base`` architecture and random weights (the backbone
written as ``latency.py`` writes it, ``WORKDIR/smolvlm2-500m-shape``, shared with it; 512x512
camera, chunk 50), on the tiny dataset; batch sizes 8 and 64 by default. The markdown tables are
printed last; the JSON (hardware, torch version, command, rows) is written to ``--json``.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS  # noqa: E402
from train_cost_report import (  # noqa: E402, F401 (gpu.sh reads the tables from train_cost)
    add_host_cost,
    evaluate_targets,
    host_cost_markdown,
    markdown,
    ops_markdown,
    profile_markdown,
    shared_markdown,
    shared_vs_separate,
)
from train_cost_step import EAGER_ONLINE, PHASES, ROWS, SHARED, UPDATE_ROWS, VARIANTS, run_interleaved, run_variant  # noqa: E402, F401 (importable from train_cost as before)

PROG = "train_cost.py"


def _parse(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--smoke", action="store_true", help="tiny world, batch 4, 1 warm-up, 3 repeats (CI)")
    p.add_argument("--real-size", action="store_true", help="smolvla_base architecture, random weights, tiny dataset")
    p.add_argument("--teacher", default=None, help="a SmolVLA pretrained_model/ folder or Hub repo id (else the tiny world)")
    p.add_argument("--dataset", default=None)
    p.add_argument("--dataset-root", type=Path, default=None)
    p.add_argument("--workdir", type=Path, default=Path("outputs/benchmarks/train_cost_world"))
    p.add_argument("--hidden", type=int, default=64, help="tiny world backbone width")
    p.add_argument("--layers", type=int, default=2, help="tiny world backbone depth")
    p.add_argument("--chunk-size", type=int, default=8, help="tiny world chunk size")
    p.add_argument("--max-action-dim", type=int, default=8, help="tiny world max_action_dim / max_state_dim")
    p.add_argument("--batch-size", default=None, help="comma-separated batch sizes; default 32 (4 with --smoke, 8,64 with --real-size)")
    p.add_argument("--teacher-steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=None, help="default 2 (1 with --smoke)")
    p.add_argument("--repeats", type=int, default=None, help="default 10 (3 with --smoke, 5 with --real-size)")
    p.add_argument("--profile", action="store_true", help="torch.profiler summary per row (top ops, launches per step, phases)")
    p.add_argument("--profile-steps", type=int, default=3)
    p.add_argument("--capture-effect", action="store_true",
                   help="time the normal step again after its process captured a teacher-sampling CUDA graph (CUDA)")
    p.add_argument("--variants", default=None, help=f"comma-separated, from {','.join(VARIANTS)} (default: the first three, "
                   f"plus {EAGER_ONLINE} on CUDA)")
    p.add_argument("--noises-per-frame", type=int, default=1, metavar="M",
                   help=f"M > 1 adds the {SHARED} row: M noises per observation, the prefix once per observation")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--json", type=Path, default=None, help="default benchmarks/results/train_cost/train_cost.json (--smoke: outputs/benchmarks/train_cost_smoke.json)")
    p.add_argument("--interleaved", type=int, default=0, metavar="ROUNDS",
                   help="also profile the normal and cached steps in one process, alternating, ROUNDS rounds of "
                   "--profile-steps steps each: the per-op host cost ratio under the same load and process state")
    p.add_argument("--variant", choices=(*VARIANTS, "interleaved"), default=None, help=argparse.SUPPRESS)  # child process
    p.add_argument("--spec", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    from common import OptionError

    default_bs = "4" if a.smoke else ("8,64" if a.real_size else "32")
    try:
        a.batch_sizes = [int(b) for b in (a.batch_size or default_bs).split(",")]
    except ValueError:
        raise OptionError(PROG, f"--batch-size must be comma-separated integers, got {a.batch_size!r}") from None
    if not a.batch_sizes or min(a.batch_sizes) < 1:
        raise OptionError(PROG, f"--batch-size: each must be >= 1, got {a.batch_sizes}")
    if a.real_size and a.teacher:
        raise OptionError(PROG, "--real-size builds its own teacher; leave out --teacher")
    a.warmup = a.warmup if a.warmup is not None else (1 if a.smoke else 2)
    a.repeats = a.repeats or (3 if a.smoke else 5 if a.real_size else 10)
    if a.noises_per_frame < 1:
        raise OptionError(PROG, f"--noises-per-frame must be >= 1, got {a.noises_per_frame}")
    if a.variants is not None:
        a.variants = a.variants.split(",")
        bad = [v for v in a.variants if v not in VARIANTS]
        if bad or "normal" not in a.variants:
            raise OptionError(PROG, f"--variants: unknown {bad} or no 'normal' (the reference); choose from {','.join(VARIANTS)}")
    return a


# ---- worlds -------------------------------------------------------------------------------------------


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


def _real_size_world(a) -> tuple[str, str, Path]:
    from real_size import real_size_teacher

    from hub_reflow.testing.tiny_world import TINY_REPO_ID, make_tiny_dataset

    dataset_root = a.workdir / "tiny-dataset"
    if not (dataset_root / "meta" / "info.json").exists():
        make_tiny_dataset(dataset_root)
    return str(real_size_teacher(a.workdir, dataset_root, TINY_REPO_ID)), TINY_REPO_ID, dataset_root


# ---- the parent ---------------------------------------------------------------------------------------


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
        out["cuda"] = torch.version.cuda
    return out


def main(argv=None) -> int:
    a = _parse(argv)
    if a.variant:  # child
        from common import quiet_imports

        quiet_imports()
        spec = json.loads(a.spec)
        result = run_interleaved(spec) if a.variant == "interleaved" else run_variant(a.variant, spec)
        print("RESULT " + json.dumps(result), flush=True)
        return 0
    if a.teacher is None:
        # The tiny backbone lives in a private HF cache under the workdir (before huggingface_hub loads).
        a.workdir = a.workdir.resolve()
        os.environ.setdefault("HF_HOME", str(a.workdir / "hf_home"))
        os.environ["HF_HUB_OFFLINE"] = "1"
    import torch

    from common import OptionError, quiet_imports

    quiet_imports()
    device = a.device
    if device not in ("auto", "cpu", "cuda"):
        raise OptionError(PROG, f"--device must be auto, cpu or cuda, got {device!r}")
    if device == "cuda" and not torch.cuda.is_available():
        raise OptionError(PROG, "--device cuda was asked for but no CUDA device is visible; use --device cpu or auto")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    variants = a.variants or [*ROWS, *([EAGER_ONLINE] if device == "cuda" else []), *([SHARED] if a.noises_per_frame > 1 else [])]
    if a.real_size:
        teacher, dataset, dataset_root = _real_size_world(a)
        size = "real size: smolvla_base architecture (SmolVLM2-500M shape, 16 VLM layers, chunk 50, 512x512), random weights, tiny dataset"
    elif a.teacher is None:
        teacher, dataset, dataset_root = _tiny_world(a)
        size = f"tiny world: backbone {a.hidden} wide x {a.layers} layers, chunk {a.chunk_size}, max_action_dim {a.max_action_dim}"
    else:
        if not a.dataset:
            raise OptionError(PROG, "--teacher needs --dataset")
        teacher, dataset, dataset_root, size = a.teacher, a.dataset, a.dataset_root, f"teacher {a.teacher}"
    spec = {"teacher": teacher, "dataset": dataset, "dataset_root": str(dataset_root) if dataset_root else None,
            "batch_sizes": a.batch_sizes, "teacher_steps": a.teacher_steps, "warmup": a.warmup, "repeats": a.repeats,
            "device": device, "profile": a.profile, "profile_steps": a.profile_steps, "capture_effect": a.capture_effect,
            "interleaved": a.interleaved, "noises_per_frame": a.noises_per_frame}
    rows, errors, interleaved = [], [], {}
    path = a.json or (Path("outputs/benchmarks/train_cost_smoke.json") if a.smoke else RESULTS / "train_cost" / "train_cost.json")

    def write(partial: bool) -> tuple[list[dict], dict]:
        """The JSON, rewritten after each variant (a run stopped part-way keeps what it measured)."""
        from hub_reflow.safeio import dumps

        # Ratios need LeRobot's own step at the same batch size.
        normal_bs = {r["batch_size"] for r in rows if r["name"] == "normal"}
        unmatched = [{**r, "error": "no normal step at this batch size to compare with"} for r in rows if r["batch_size"] not in normal_bs]
        kept = sorted((r for r in rows if r["batch_size"] in normal_bs),
                      key=lambda r: (a.batch_sizes.index(r["batch_size"]), variants.index(r["name"])))
        add_host_cost(kept)
        targets = evaluate_targets(kept, device, interleaved) if kept else {}
        out = {
            "benchmark": "train_cost",
            "partial": partial,
            "hardware": _hardware(device),
            "device": device,
            "torch": torch.__version__,
            "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join([PROG, *argv]),
            "size": size,
            "batch_size": a.batch_sizes[0] if len(a.batch_sizes) == 1 else a.batch_sizes,
            "batch_sizes": a.batch_sizes, "teacher_steps": a.teacher_steps, "warmup": a.warmup, "repeats": a.repeats,
            "smoke": a.smoke, "real_size": a.real_size, "profile": a.profile, "noises_per_frame": a.noises_per_frame,
            "rows": kept,
            "interleaved": interleaved or None,
            "errors": errors + ([] if partial else unmatched),
            "targets": targets,
        }
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(dumps(out, indent=2))
        return kept, out

    for variant in variants:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", variant, "--spec", json.dumps(spec)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode != 0 or line is None:  # keep going: the other variants' numbers still count
            print(r.stderr[-4000:], file=sys.stderr)
            print(f"{PROG}: variant {variant} failed (exit {r.returncode})", file=sys.stderr)
            errors.append({"name": variant, "batch_size": None, "error": f"exit {r.returncode}: "
                           + ((r.stderr.strip().splitlines() or ["no output"])[-1][:300])})
            continue
        for row in json.loads(line[len("RESULT "):]):
            if "error" in row:
                print(f"{variant} batch {row['batch_size']}: FAILED {row['error']}", file=sys.stderr, flush=True)
                errors.append(row)
                continue
            rows.append(row)
            print(f"{variant} batch {row['batch_size']}: {row['median_step_ms']:.1f} ms, {row['aten_ops_per_step']} aten ops, "
                  f"peak RSS {row['peak_rss_mb']:.0f} MB", file=sys.stderr, flush=True)
        write(partial=True)
    if a.interleaved:
        cmd = [sys.executable, str(Path(__file__).resolve()), "--variant", "interleaved", "--spec", json.dumps(spec)]
        r = subprocess.run(cmd, capture_output=True, text=True, env=os.environ)
        line = next((ln for ln in r.stdout.splitlines() if ln.startswith("RESULT ")), None)
        if r.returncode != 0 or line is None:
            print(r.stderr[-4000:], file=sys.stderr)
            errors.append({"name": "interleaved", "batch_size": a.batch_sizes[0], "error": f"exit {r.returncode}: "
                           + ((r.stderr.strip().splitlines() or ["no output"])[-1][:300])})
        else:
            interleaved.update(json.loads(line[len("RESULT "):]))
    rows, out = write(partial=False)
    targets, errors = out["targets"], out["errors"]
    for t in targets.values():
        print(f"- {t['target']}: {'met' if t['met'] else 'NOT met'} ({t['detail']})")
    hw = out["hardware"]
    print(f"{size}; batch {','.join(map(str, a.batch_sizes))}; device {device} "
          f"({hw.get('gpu') or hw['cpu']}); torch {torch.__version__}; JSON: {path}")
    if a.profile:
        print()
        print(profile_markdown(rows))
        print()
        print(host_cost_markdown(rows))
    print()
    print(ops_markdown(rows))
    print()
    print(markdown(rows))
    if any(r["name"] == SHARED for r in rows):
        print()
        print(shared_markdown(rows))
    if errors:
        print(f"{PROG}: failed: " + "; ".join(f"{e['name']} batch {e['batch_size']}: {e['error']}" for e in errors), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
