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
  the training process, and a process that has captured one paid ~1.6x per host operation in the
  first H200 run (issue 18; ``--capture-effect`` measures that on LeRobot's normal step).
- ``reflow_online_eager`` (on CUDA, or with ``--variants``): online pairs with LeRobot's eager
  ``sample_actions`` (``--no-cuda-graphs``).
- ``reflow_cached_sr``, ``reflow_cached_bf16`` (with ``--variants``; first batch size only: memory
  rows): the cached step with the other weight updates of ``ReflowConfig.update``, AdamW with
  stochastic rounding straight on the bf16 weights (``sr_adamw.py``), and LeRobot's AdamW on the
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
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

ROWS = ("normal", "reflow_online", "reflow_cached")
EAGER_ONLINE = "reflow_online_eager"
# The cached step with the other weight updates (ReflowConfig.update; memory rows, first batch size only).
UPDATE_ROWS = {"reflow_cached": "fp32-masters", "reflow_cached_sr": "bf16-sr", "reflow_cached_bf16": "bf16"}
SHARED = "reflow_shared"
VARIANTS = (*ROWS, EAGER_ONLINE, "reflow_cached_sr", "reflow_cached_bf16", SHARED)
PHASES = ("preprocess", "forward", "backward", "optimizer")
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
    p.add_argument("--json", type=Path, default=None, help="default outputs/benchmarks/train_cost[_smoke].json")
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


# ---- the child: one variant --------------------------------------------------------------------------


def _bytes(module) -> int:
    return sum(t.numel() * t.element_size() for t in (*module.parameters(), *module.buffers()))


def _rss_now_kb() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


class _Step:
    """One training step in phases: ``preprocess`` (the policy's preprocessor on the raw batch),
    ``forward`` (loss), ``backward``, ``optimizer`` (clip, step, zero_grad)."""

    def __init__(self, pre, raw, loss_fn, trainable, optimizer, clip, master=None):
        self.pre, self.raw, self.loss_fn = pre, raw, loss_fn
        self.trainable, self.optimizer, self.clip = trainable, optimizer, clip
        self.master = master  # hub-reflow's fp32 master weights (reflow rows), as hub-reflow train steps
        self.batch = self.loss = None

    def preprocess(self):
        self.batch = self.pre(dict(self.raw))

    def forward(self):
        self.loss = self.loss_fn(self.batch)

    def backward(self):
        self.loss.backward()

    def optimizer_step(self):
        import torch

        if self.master is not None:
            self.master.grads_to_masters()
        if self.clip:
            torch.nn.utils.clip_grad_norm_(self.trainable, self.clip)
        self.optimizer.step()
        if self.master is not None:
            self.master.masters_to_params()
        self.optimizer.zero_grad(set_to_none=True)

    def phases(self):
        return (("preprocess", self.preprocess), ("forward", self.forward), ("backward", self.backward),
                ("optimizer", self.optimizer_step))

    def __call__(self):
        for _, fn in self.phases():
            fn()
        return self.loss


def _count_ops(step: _Step) -> dict:
    from torch.utils.flop_counter import FlopCounterMode

    from common import op_counter

    phases, names, flops = {}, {}, {}
    for name, fn in step.phases():
        with FlopCounterMode(display=False) as f, op_counter() as c:
            fn()
        phases[name] = sum(c.counts.values())
        flops[name] = f.get_total_flops()
        for k, v in c.counts.items():
            names[k] = names.get(k, 0) + v
    return {"flops_per_step": sum(flops.values()), "flops_by_phase": flops,
            "aten_ops_per_step": sum(phases.values()), "aten_ops_by_phase": phases,
            "item_calls_per_step": names.get("aten::_local_scalar_dense", 0), "aten_ops_by_name": names}


def _profile(step: _Step, device: str, steps: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common import host_ops, profile_summary

    cuda = device == "cuda"
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=acts) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    try:
        out = profile_summary(prof, steps)
        out["host_ops"] = host_ops(prof, steps)
    except Exception as e:  # a profiler API difference must not lose the run's other numbers
        out = {"error": f"{type(e).__name__}: {e}"}
    # Wall time per phase with the device synchronised between phases (where the time goes).
    per_phase = {name: [] for name in PHASES}
    for _ in range(steps):
        for name, fn in step.phases():
            if cuda:
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            fn()
            if cuda:
                torch.cuda.synchronize()
            per_phase[name].append(time.perf_counter() - t0)
    out["phase_ms"] = {k: 1000 * statistics.median(v) for k, v in per_phase.items()}
    return out


def _timed_ms(step: _Step, cuda: bool, n: int) -> tuple[float, float]:
    """Median wall and process-CPU milliseconds of ``n`` steps."""
    import torch

    wall, cpu = [], []
    for _ in range(n):
        t0, c0 = time.perf_counter(), time.process_time()
        step()
        if cuda:
            torch.cuda.synchronize()
        wall.append(1000 * (time.perf_counter() - t0))
        cpu.append(1000 * (time.process_time() - c0))
    return statistics.median(wall), statistics.median(cpu)


def _idle_cpu() -> dict:
    """OS threads of this process, and the CPU time it burns while the main thread sleeps 0.3 s (a
    spinning background thread shows here)."""
    c0 = time.process_time()
    time.sleep(0.3)
    return {"threads": len(os.listdir("/proc/self/task")), "cpu_s_while_asleep": time.process_time() - c0}


def capture_effect(step: _Step, policy, pre, raw: dict, teacher_steps: int, cuda: bool, n: int) -> dict:
    """LeRobot's normal step, timed in one process before and after the process captures a CUDA
    graph of teacher sampling (``fastpath``), in four states: before; after the capture's warm-up
    alone (side stream, host constants, sync debug mode); after the capture; after the graph is
    freed. Issue 18: the steps of processes that had captured a graph cost ~1.6x per host operation."""
    import copy
    import gc

    import torch

    from hub_reflow.fastpath import TeacherSampler
    from hub_reflow.smolvla import noise_shape, policy_inputs

    out = {"captured": False, "idle_before": _idle_cpu()}
    out["before"] = _timed_ms(step, cuda, n)
    teacher = copy.deepcopy(policy).eval().requires_grad_(False)
    sampler = TeacherSampler(teacher, teacher_steps)
    with torch.no_grad():
        inputs = policy_inputs(teacher, pre(dict(raw)))
        noise = torch.randn(noise_shape(teacher, inputs.batch_size), device=inputs.state.device)
        if cuda:
            sampler.warm_up_only(inputs, noise)
    out["after_warm_up"] = _timed_ms(step, cuda, n)
    with torch.no_grad():
        sampler(inputs, noise)
    out["captured"] = sampler.stats["captures"] > 0
    out["idle_after_capture"] = _idle_cpu()
    out["after_capture"] = _timed_ms(step, cuda, n)
    del sampler, teacher
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()
    out["after_free"] = _timed_ms(step, cuda, n)
    return out


def _raw_batch(ds, b: int) -> dict:
    import torch

    idx = [(i * 7919) % len(ds) for i in range(b)]  # a fixed spread of frames
    frames = [ds[i] for i in idx]
    raw = {k: torch.stack([f[k] for f in frames]) for k in frames[0] if isinstance(frames[0][k], torch.Tensor)}
    raw["task"] = [f["task"] for f in frames]
    return raw


def normal_step(policy, cfg, pre, raw: dict) -> _Step:
    """LeRobot's fine-tune step: its forward and its optimizer preset, built as lerobot-train builds it."""
    opt_cfg = cfg.get_optimizer_preset()
    optimizer = opt_cfg.build(policy.get_optim_params())  # what lerobot-train's make_optimizer does
    return _Step(pre, raw, lambda batch: policy.forward(batch)[0],
                 [p for p in policy.parameters() if p.requires_grad], optimizer, opt_cfg.grad_clip_norm)


def reflow_step(rp, cfg, pre, raw: dict, variant: str) -> _Step:
    """hub-reflow train's step: online pairs, or (the ``UPDATE_ROWS``) one cached pair made up front;
    fp32 masters of bf16 weights unless the config's update says otherwise."""
    import torch

    from hub_reflow.precision import MasterWeights
    from hub_reflow.smolvla import policy_inputs
    from hub_reflow.train_utils import make_optimizer

    master = MasterWeights(rp.trainable_parameters(), enabled=rp.reflow_config.update == "fp32-masters")
    optimizer, _, clip, _ = make_optimizer(master.params, cfg, rp.reflow_config)
    if variant in UPDATE_ROWS:
        with torch.no_grad():
            noise, target = rp.make_pairs(policy_inputs(rp.student, pre(dict(raw))))

        def loss_fn(batch, noise=noise, target=target):
            return rp(batch, noise=noise, target=target)[0]
    else:
        def loss_fn(batch):
            return rp(batch)[0]
    return _Step(pre, raw, loss_fn, master.params, optimizer, clip, master)


def _setup(spec: dict):
    """The teacher checkpoint, its config, its preprocessor on the device, the dataset."""
    from lerobot.datasets.factory import resolve_delta_timestamps
    from lerobot.datasets.lerobot_dataset import LeRobotDataset, LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors

    from hub_reflow.checkpoint import read_policy_config, resolve_checkpoint

    resolved = resolve_checkpoint(spec["teacher"], what="teacher")
    cfg = read_policy_config(resolved.path)
    pre, _ = make_pre_post_processors(cfg, pretrained_path=str(resolved.path),
                                      preprocessor_overrides={"device_processor": {"device": spec["device"]}})
    meta = LeRobotDatasetMetadata(spec["dataset"], root=spec["dataset_root"])
    ds = LeRobotDataset(spec["dataset"], root=spec["dataset_root"], delta_timestamps=resolve_delta_timestamps(cfg, meta))
    return resolved, cfg, pre, ds


def run_interleaved(spec: dict) -> dict:
    """LeRobot's normal step and the cached reflow step in one process (no CUDA graph captured in
    it), profiled in alternating rounds at the first batch size: the per-op host cost ratio with
    the machine's load and the process's state the same for both (``--interleaved ROUNDS``)."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    from common import host_cost_ratio, host_ops

    from hub_reflow.checkpoint import load_smolvla
    from hub_reflow.config import ReflowConfig
    from hub_reflow.policy import ReflowPolicy

    device, cuda, n = spec["device"], spec["device"] == "cuda", spec["profile_steps"]
    torch.manual_seed(0)
    resolved, cfg, pre, ds = _setup(spec)
    policy = load_smolvla(resolved.path, device=device).train()
    rp = ReflowPolicy.from_teacher(resolved, ReflowConfig(teacher_steps=spec["teacher_steps"], cuda_graphs=False),
                                   device=device).train()
    raw = _raw_batch(ds, spec["batch_sizes"][0])
    steps = {"normal": normal_step(policy, cfg, pre, raw), "reflow_cached": reflow_step(rp, cfg, pre, raw, "reflow_cached")}
    for step in steps.values():
        for _ in range(spec["warmup"] + 1):
            step()
    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    ops: dict = {k: {} for k in steps}
    cpu: dict = {k: [] for k in steps}
    for r in range(spec["interleaved"]):
        for name in (list(steps) if r % 2 == 0 else list(steps)[::-1]):
            c0 = time.process_time()
            with profile(activities=acts) as prof:
                for _ in range(n):
                    steps[name]()
                if cuda:
                    torch.cuda.synchronize()
            cpu[name].append(1000 * (time.process_time() - c0) / n)
            for op, (calls, us) in host_ops(prof, n).items():
                acc = ops[name].setdefault(op, [0.0, 0.0])
                acc[0] += calls / spec["interleaved"]
                acc[1] += us / spec["interleaved"]
    return {"batch_size": spec["batch_sizes"][0], "rounds": spec["interleaved"], "steps_per_round": n,
            "host_cost_vs_normal": host_cost_ratio(ops["reflow_cached"], ops["normal"]),
            "median_profiled_cpu_ms": {k: statistics.median(v) for k, v in cpu.items()}}


def run_variant(variant: str, spec: dict) -> list[dict]:
    import torch

    from hub_reflow.checkpoint import load_smolvla
    from hub_reflow.config import ReflowConfig
    from hub_reflow.policy import ReflowPolicy

    device = spec["device"]
    cuda = device == "cuda"
    torch.manual_seed(0)
    rss_imports_kb = _rss_now_kb()
    resolved, cfg, pre, ds = _setup(spec)

    teacher_bytes, rp, policy = None, None, None
    if variant == "normal":
        policy = load_smolvla(resolved.path, device=device)
        policy.train()
        model_bytes = _bytes(policy)
    else:
        # Only the online step samples through CUDA graphs. ``hub-reflow train --pairs`` reads its pairs
        # from a file and never samples the teacher in the training process; the cached row makes its
        # one pair eagerly so, as there, no graph is captured in its process (issue 18: a captured graph
        # made every host operation of the cached step ~1.6x dearer; see capture_effect).
        rcfg = ReflowConfig(teacher_steps=spec["teacher_steps"], batch_size=max(spec["batch_sizes"]), steps=1000,
                            cuda_graphs=variant in ("reflow_online", SHARED), update=UPDATE_ROWS.get(variant, "fp32-masters"),
                            noises_per_frame=spec.get("noises_per_frame", 1) if variant == SHARED else 1)
        rp = ReflowPolicy.from_teacher(resolved, rcfg, device=device)
        rp.train()
        model_bytes, teacher_bytes = _bytes(rp.student), _bytes(rp.teacher)

    def one(b: int) -> dict:
        raw = _raw_batch(ds, b)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        step = normal_step(policy, cfg, pre, raw) if variant == "normal" else reflow_step(rp, cfg, pre, raw, variant)

        times, cpu_times = [], []
        rss_before_steps_kb = _rss_now_kb()
        for i in range(spec["warmup"] + spec["repeats"]):
            t0, c0 = time.perf_counter(), time.process_time()
            loss = step()
            if cuda:
                torch.cuda.synchronize()
            if i >= spec["warmup"]:
                times.append(time.perf_counter() - t0)
                cpu_times.append(time.process_time() - c0)
            assert math.isfinite(float(loss)), "non-finite loss"
        peak_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # Linux: KiB
        cuda_peak = torch.cuda.max_memory_allocated() / 2**20 if cuda else None
        row = {
            "name": variant,
            "batch_size": b,
            "update": None if variant == "normal" else rp.reflow_config.update,
            "noises_per_frame": rp.reflow_config.noises_per_frame if rp is not None else 1,
            "median_step_ms": 1000 * statistics.median(times),
            "min_step_ms": 1000 * min(times),
            "max_step_ms": 1000 * max(times),
            # CPU time of the process (all its threads) per step: less sensitive than wall time to
            # other work on a shared machine. On CUDA a synchronising host spins: CPU time then
            # includes the wait for the GPU, so CPU == wall does not by itself mean launch-bound.
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
            "cuda_peak_allocated_mb": cuda_peak,
            "final_loss": float(loss),
        }
        row.update(_count_ops(step))
        if cuda:
            from common import count_cuda_syncs

            before = torch.cuda.memory_stats()
            row["cuda_syncs_per_step"] = count_cuda_syncs(step)
            torch.cuda.synchronize()
            after = torch.cuda.memory_stats()
            # cudaMalloc calls (new allocator segments) and allocator retries (frees + re-mallocs
            # under memory pressure) in that one steady-state step: 0 when the cache serves it.
            row["cuda_mallocs_per_step"] = after.get("segment.all.allocated", 0) - before.get("segment.all.allocated", 0)
            row["cuda_alloc_retries_per_step"] = after.get("num_alloc_retries", 0) - before.get("num_alloc_retries", 0)
        else:
            row["cuda_syncs_per_step"] = row["cuda_mallocs_per_step"] = row["cuda_alloc_retries_per_step"] = None
        if rp is not None and variant not in UPDATE_ROWS:
            row["teacher_sampling"] = rp.teacher_sampling
            row["teacher_sampler_stats"] = dict(rp.teacher_sampler.stats)
        if spec.get("profile"):
            row["profile"] = _profile(step, device, spec["profile_steps"])
        if variant == "normal" and spec.get("capture_effect") and b == spec["batch_sizes"][0]:
            row["capture_effect"] = capture_effect(step, policy, pre, raw, spec["teacher_steps"], cuda,
                                                   max(spec["repeats"], 3))
        return row

    rows = []
    for b in spec["batch_sizes"][:1] if variant in UPDATE_ROWS and variant != "reflow_cached" else spec["batch_sizes"]:
        try:
            rows.append(one(b))
        except Exception as e:  # e.g. out of memory at the larger batch: keep the other rows
            rows.append({"name": variant, "batch_size": b, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"})
        if cuda:
            torch.cuda.empty_cache()
    return rows


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


def real_size_teacher(workdir: Path, dataset_root: Path, repo_id: str) -> Path:
    """A ``pretrained_model/`` folder with the smolvla_base architecture and random weights for the
    dataset's features: built by LeRobot (``SmolVLAPolicy`` from the backbone folder, processors
    from the dataset's statistics) and saved by LeRobot, once."""
    import torch
    from lerobot.configs.types import FeatureType
    from lerobot.datasets.lerobot_dataset import LeRobotDatasetMetadata
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.configuration_smolvla import SmolVLAConfig
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
    from lerobot.utils.feature_utils import dataset_to_policy_features

    from latency import SMOLVLA_BASE, write_real_size_backbone

    folder = workdir / "real-size-teacher"
    if (folder / "model.safetensors").exists():
        return folder
    print(f"writing the real-size backbone and teacher under {workdir} (once, ~2 GB)", file=sys.stderr, flush=True)
    backbone = write_real_size_backbone(workdir / "smolvlm2-500m-shape").resolve()
    meta = LeRobotDatasetMetadata(repo_id, root=dataset_root)
    feats = dataset_to_policy_features(meta.features)
    cfg = SmolVLAConfig(
        vlm_model_name=str(backbone), load_vlm_weights=True, device="cpu",
        input_features={k: f for k, f in feats.items() if f.type is not FeatureType.ACTION},
        output_features={k: f for k, f in feats.items() if f.type is FeatureType.ACTION},
        **SMOLVLA_BASE,
    )
    torch.manual_seed(0)
    policy = SmolVLAPolicy(cfg)
    pre, post = make_pre_post_processors(cfg, dataset_stats=meta.stats)
    tmp = folder.with_name(folder.name + ".tmp")
    tmp.mkdir(parents=True, exist_ok=True)
    policy.save_pretrained(tmp)
    pre.save_pretrained(tmp)
    post.save_pretrained(tmp)
    tmp.rename(folder)
    return folder


def _real_size_world(a) -> tuple[str, str, Path]:
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


def _fmt(x, digits=1) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def markdown(rows: list[dict]) -> str:
    """Time and memory, one line per row; ratios against the normal step at the same batch size."""
    normal = {r["batch_size"]: r for r in rows if r["name"] == "normal"}
    lines = ["| step | batch | median wall ms | vs normal | median CPU ms | CPU vs normal | peak RSS MB | peak RSS above imports MB | trained weights MB | teacher weights MB | CUDA peak MB |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n = normal[r["batch_size"]]
        lines.append(f"| {r['name']} | {r['batch_size']} | {r['median_step_ms']:.1f} | {r['median_step_ms'] / n['median_step_ms']:.2f} | "
                     f"{r['median_cpu_ms']:.1f} | {r['median_cpu_ms'] / n['median_cpu_ms']:.2f} | "
                     f"{r['peak_rss_mb']:.0f} | {r['peak_rss_above_imports_mb']:.1f} | {r['trained_model_weights_mb']:.1f} | "
                     f"{r['teacher_weights_mb']:.1f} | {_fmt(r['cuda_peak_allocated_mb'], 0)} |")
    return "\n".join(lines)


def ops_markdown(rows: list[dict]) -> str:
    """Operator counts per step (hardware-free), and launches per step where profiled on CUDA."""
    normal = {r["batch_size"]: r for r in rows if r["name"] == "normal"}
    lines = ["| step | batch | aten ops / step | vs normal | preprocess | forward | backward | optimizer | item() / step | CUDA syncs / step | cudaMalloc / step | kernel launches / step | graph launches / step |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        n, ph, prof = normal[r["batch_size"]], r["aten_ops_by_phase"], r.get("profile") or {}
        lines.append(f"| {r['name']} | {r['batch_size']} | {r['aten_ops_per_step']} | {r['aten_ops_per_step'] / n['aten_ops_per_step']:.2f} | "
                     + " | ".join(str(ph[k]) for k in PHASES)
                     + f" | {r['item_calls_per_step']} | {_fmt(r['cuda_syncs_per_step'], 0)} | {_fmt(r['cuda_mallocs_per_step'], 0)} | "
                     f"{_fmt(prof.get('kernel_launches_per_step'), 0)} | {_fmt(prof.get('graph_launches_per_step'), 0)} |")
    return "\n".join(lines)


def profile_markdown(rows: list[dict], top: int = 8) -> str:
    out = []
    for r in rows:
        prof = r.get("profile")
        if not prof:
            continue
        ph = prof.get("phase_ms", {})
        out.append(f"#### {r['name']}, batch {r['batch_size']}: phases (device synchronised between them) "
                   + ", ".join(f"{k} {v:.1f} ms" for k, v in ph.items()))
        if "error" in prof:
            out.append(f"profiler summary failed: {prof['error']}")
            continue
        for key, label, col in (("top_cpu", "self CPU", "self_cpu_ms_per_step"), ("top_device", "self CUDA", "self_device_ms_per_step")):
            if prof.get(key):
                out.append(f"top ops by {label} time (ms per step, calls per step): "
                           + "; ".join(f"{e['op']} {e[col]:.2f} ({e['calls_per_step']:.0f})" for e in prof[key][:top]))
    return "\n".join(out)


def shared_vs_separate(rows: list[dict]) -> list[dict]:
    """Per batch size: one shared-prefix step with M noises per observation against M separate
    online steps of the same batch (the same (observation, noise) rows): ratios below 1 are savings."""
    online = {r["batch_size"]: r for r in rows if r["name"] == "reflow_online"}
    out = []
    for r in rows:
        if r["name"] != SHARED or r["batch_size"] not in online:
            continue
        m, o = r["noises_per_frame"], online[r["batch_size"]]
        out.append({"batch_size": r["batch_size"], "noises_per_frame": m,
                    **{f"{k}_ratio": r[k] / (m * o[k]) for k in ("median_step_ms", "median_cpu_ms", "flops_per_step", "aten_ops_per_step")},
                    "flops_ratio_by_phase": {k: (r["flops_by_phase"][k] / (m * o["flops_by_phase"][k]) if o["flops_by_phase"][k] else None)
                                             for k in PHASES}})
    return out


def shared_markdown(rows: list[dict]) -> str:
    lines = ["| batch | M | shared step / M online steps: wall | CPU time | FLOPs | aten ops | FLOPs forward | FLOPs backward |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for c in shared_vs_separate(rows):
        ph = c["flops_ratio_by_phase"]
        lines.append(f"| {c['batch_size']} | {c['noises_per_frame']} | {c['median_step_ms_ratio']:.2f} | {c['median_cpu_ms_ratio']:.2f} | "
                     f"{c['flops_per_step_ratio']:.2f} | {c['aten_ops_per_step_ratio']:.2f} | {_fmt(ph['forward'], 2)} | {_fmt(ph['backward'], 2)} |")
    return "\n".join(lines)


def add_host_cost(rows: list[dict]) -> None:
    """Per profiled row, ``host_cost_vs_normal``: the normal step's aten operators priced at this
    row's host cost per call, over the normal step's own cost (``common.host_cost_ratio``)."""
    from common import host_cost_ratio

    normal = {r["batch_size"]: r for r in rows if r["name"] == "normal"}
    for r in rows:
        ops, ref = (r.get("profile") or {}).get("host_ops"), (normal[r["batch_size"]].get("profile") or {}).get("host_ops")
        if ops and ref:
            r["host_cost_vs_normal"] = host_cost_ratio(ops, ref)


def host_cost_markdown(rows: list[dict]) -> str:
    """Host cost per operator call against the normal step's, the same operators (--profile)."""
    rows = [r for r in rows if r.get("host_cost_vs_normal")]
    if not rows:
        return ""
    names = list(dict.fromkeys(k for r in rows for k in r["host_cost_vs_normal"]["by_op"]))
    lines = ["| step | batch | per-op host cost vs normal | shared aten ops | " + " | ".join(names) + " |",
             "|---|---:|---:|---:|" + "---:|" * len(names)]
    for r in rows:
        h = r["host_cost_vs_normal"]
        lines.append(f"| {r['name']} | {r['batch_size']} | {_fmt(h['ratio'], 3)} | {h['ops']} | "
                     + " | ".join(_fmt(h["by_op"].get(k), 2) for k in names) + " |")
    ce = next((r["capture_effect"] for r in rows if r.get("capture_effect")), None)
    if ce:
        lines.append("")
        lines.append("normal step (wall ms, CPU ms) in one process, before and after it captured a teacher-sampling "
                     f"CUDA graph (captured: {ce['captured']}): "
                     + "; ".join(f"{k.replace('_', ' ')} {ce[k][0]:.1f}, {ce[k][1]:.1f}"
                                 for k in ("before", "after_warm_up", "after_capture", "after_free"))
                     + "; OS threads and CPU s burnt during a 0.3 s sleep, before: {threads}, {cpu_s_while_asleep:.3f}; "
                       .format(**ce["idle_before"])
                     + "after the capture: {threads}, {cpu_s_while_asleep:.3f}".format(**ce["idle_after_capture"]))
    return "\n".join(lines)


def evaluate_targets(rows: list[dict], device: str, interleaved: dict | None = None) -> dict:
    """The issue's targets at the first batch size: memory, cached-step time, per-op host cost (from
    the interleaved measurement when there is one) and operator count, online-step time."""
    b = rows[0]["batch_size"]
    by = {r["name"]: r for r in rows if r["batch_size"] == b}
    n = by["normal"]
    key = "cuda_peak_allocated_mb" if device == "cuda" else "peak_rss_above_imports_mb"
    out = {}
    reflow = [r for name, r in by.items() if name != "normal"]
    if reflow:
        teacher_mb = reflow[0]["teacher_weights_mb"]
        budget = n[key] + teacher_mb
        out["memory"] = {"target": f"reflow peak memory ({key}) <= normal fine-tune's + teacher's weights",
                         "met": all(r[key] <= budget for r in reflow),
                         "met_by": [r["name"] for r in reflow if r[key] <= budget],
                         "detail": "; ".join(f"{r['name']} {r[key]:.1f} MB" for r in reflow)
                                   + f"; budget {n[key]:.1f} + {teacher_mb:.1f} = {budget:.1f} MB (batch {b})"}
    if "reflow_cached" in by:
        ca = by["reflow_cached"]
        ratio = ca["median_step_ms"] / n["median_step_ms"]
        out["cached_time"] = {"target": "cached-pair step time within 10% of a normal step",
                              "met": ratio <= 1.10,
                              "detail": f"{ca['median_step_ms']:.1f} ms vs {n['median_step_ms']:.1f} ms = {ratio:.2f}x; "
                                        f"CPU time {ca['median_cpu_ms'] / n['median_cpu_ms']:.2f}x (batch {b})"}
        where = "one process, alternating rounds" if interleaved else "separate processes"
        h = (interleaved or {}).get("host_cost_vs_normal") or ca.get("host_cost_vs_normal") or {}
        if h.get("ratio") is not None:
            out["cached_host_cost"] = {"target": "cached-pair step per-op host cost <= 1.05x a normal step's",
                                       "met": h["ratio"] <= 1.05,
                                       "detail": f"{h['ratio']:.3f}x over {h['ops']} shared aten ops ({where}); "
                                                 + ", ".join(f"{k} {v:.2f}x" for k, v in h["by_op"].items())
                                                 + f" (batch {b})"}
        ops = ca["aten_ops_per_step"] / n["aten_ops_per_step"]
        out["cached_ops"] = {"target": "cached-pair step aten op count <= 1.02x a normal step's",
                             "met": ops <= 1.02,
                             "detail": f"{ca['aten_ops_per_step']} vs {n['aten_ops_per_step']} = {ops:.3f}x (batch {b})"}
    if "reflow_online" in by:
        on = by["reflow_online"]
        ratio = on["median_step_ms"] / n["median_step_ms"]
        out["online_time"] = {"target": "online-pair step time <= 2.0x a normal step",
                              "met": ratio <= 2.0,
                              "detail": f"{on['median_step_ms']:.1f} ms vs {n['median_step_ms']:.1f} ms = {ratio:.2f}x; "
                                        f"teacher sampling: {on.get('teacher_sampling')} (batch {b})"}
    for c in shared_vs_separate(rows)[:1]:
        m = c["noises_per_frame"]
        out["shared_prefix"] = {"target": f"one shared-prefix step with {m} noises per observation costs less than {m} separate online steps",
                                "met": c["flops_per_step_ratio"] < 1 and c["median_cpu_ms_ratio"] < 1,
                                "detail": f"FLOPs {c['flops_per_step_ratio']:.2f}x, CPU time {c['median_cpu_ms_ratio']:.2f}x, "
                                          f"wall {c['median_step_ms_ratio']:.2f}x, aten ops {c['aten_ops_per_step_ratio']:.2f}x "
                                          f"(batch {c['batch_size']})"}
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
    path = a.json or Path("outputs/benchmarks") / ("train_cost_smoke.json" if a.smoke else "train_cost.json")

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
