"""``train_cost.py``'s child process: one variant's training step, built as LeRobot's fine-tune or
``hub-reflow train`` builds it, timed, counted (aten operators, FLOPs) and profiled at each batch
size; or (``--interleaved``) the normal and cached steps profiled in one process in alternating
rounds. The row names and what each row is: ``train_cost.py``'s docstring."""

from __future__ import annotations

import math
import os
import resource
import statistics
import time

ROWS = ("normal", "reflow_online", "reflow_cached")
EAGER_ONLINE = "reflow_online_eager"
# The cached step with the other weight updates (ReflowConfig.update; memory rows, first batch size only).
UPDATE_ROWS = {"reflow_cached": "fp32-masters", "reflow_cached_sr": "bf16-sr", "reflow_cached_bf16": "bf16"}
SHARED = "reflow_shared"
VARIANTS = (*ROWS, EAGER_ONLINE, "reflow_cached_sr", "reflow_cached_bf16", SHARED)
PHASES = ("preprocess", "forward", "backward", "optimizer")


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
    freed. Issue 18: the steps of processes that had captured a graph cost more per host operation
    (docs/results.md#gpu-runs)."""
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

    from hub_reflow.training.optimizer import MasterWeights
    from hub_reflow.smolvla import policy_inputs
    from hub_reflow.training.optimizer import make_optimizer

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
        # made every host operation of the cached step dearer; see capture_effect).
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
            # (which alone dwarfs a tiny model and would hide its differences).
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
