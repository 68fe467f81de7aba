"""Teacher sampling for reflow pairs (prefix + 10 Euler steps at training batch sizes): LeRobot's
eager ``sample_actions`` against hub-reflow's fast path (``hub_reflow/fastpath.py``: CUDA graphs
captured per batch shape on CUDA, the same code eagerly on the CPU), on the same inputs and noise.

The model is SmolVLA with the ``smolvla_base`` architecture and random weights, built as
``latency.py`` builds it (``lerobot`` layout: bf16 VLM and expert), one camera. Per batch size: the
fast path's first call (capture: two warm-up runs and the recording) apart, then the median of
``--repeats`` calls of each path, the speed-up, and the largest difference between the two chunks
(bit-identical on the CPU; CUDA graphs replay the same kernels, so a difference stays within bf16
rounding). The last batch size is a smaller "last batch" that gets its own graph.

    python benchmarks/teacher_sampling.py                       # real size, batch 8, 64 and 5
    python benchmarks/teacher_sampling.py --smoke               # tiny backbone (CI)

Prints a markdown table last; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import RESULTS, OptionError, fmt, hardware, hardware_line, markdown, median_ms, quiet_imports, setup_device, time_call, write_json  # noqa: E402

PROG = "teacher_sampling.py"


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the tiny test backbone (seconds; for CI)")
    p.add_argument("--batch-sizes", default="8,64,5", help="comma-separated (default 8,64,5: the last a smaller last batch)")
    p.add_argument("--steps", type=int, default=10, help="the teacher's Euler steps")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench"), help="where latency.py writes its backbone folder")
    p.add_argument("--out", type=Path, default=RESULTS / "teacher_sampling" / "teacher_sampling.json")
    a = p.parse_args(argv)
    try:
        a.batch_sizes = [int(b) for b in a.batch_sizes.split(",")]
    except ValueError:
        raise OptionError(PROG, f"--batch-sizes must be comma-separated integers, got {a.batch_sizes!r}") from None
    if not a.batch_sizes or min(a.batch_sizes) < 1 or a.steps < 1 or a.repeats < 1:
        raise OptionError(PROG, "--batch-sizes, --steps and --repeats must be >= 1")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    import torch

    device = setup_device(a.device, PROG)
    quiet_imports()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.fastpath import TeacherSampler
    from hub_reflow.smolvla import policy_inputs, sample_chunk
    from real_size import make_batch, policy_config, write_real_size_backbone

    t_start = time.perf_counter()
    if a.smoke:
        from hub_reflow.testing.tiny_world import make_tiny_backbone

        backbone = a.workdir / "tiny-smolvlm"
        if not (backbone / "config.json").exists():
            make_tiny_backbone(backbone)
    else:
        backbone = write_real_size_backbone(a.workdir / "smolvlm2-500m-shape")
    torch.manual_seed(0)
    cfg = policy_config(backbone, smoke=a.smoke, cameras=1, layout="lerobot", device=device)
    policy = SmolVLAPolicy(cfg).to(device).eval()
    sampler = TeacherSampler(policy, a.steps)
    rows = []
    for b in a.batch_sizes:
        print(f"batch {b}", file=sys.stderr, flush=True)
        with torch.inference_mode():
            inputs = policy_inputs(policy, make_batch(policy, 1, device, seed=b, batch_size=b))
        z = torch.randn(b, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(b)).to(device)
        # The fast path's first call for this shape: on CUDA the capture (two warm-up runs + recording).
        t0 = time.perf_counter()
        fast = sampler(inputs, z)
        if device.type == "cuda":
            torch.cuda.synchronize()
        first_s = time.perf_counter() - t0
        eager = sample_chunk(policy, inputs, z, a.steps)
        fast_t = time_call(lambda: sampler(inputs, z), device, warmup=1, repeats=a.repeats)
        eager_t = time_call(lambda: sample_chunk(policy, inputs, z, a.steps), device, warmup=1, repeats=a.repeats)
        diff = (fast.float() - eager.float()).abs()
        peak_mb = None  # what one eager call of b rows holds above what was allocated before it (CUDA)
        if device.type == "cuda":
            torch.cuda.synchronize()
            before = torch.cuda.memory_allocated()
            torch.cuda.reset_peak_memory_stats()
            sample_chunk(policy, inputs, z, a.steps)
            torch.cuda.synchronize()
            peak_mb = (torch.cuda.max_memory_allocated() - before) / 2**20
        rows.append({
            "batch_size": b, "eager_ms": median_ms(eager_t), "fast_ms": median_ms(fast_t),
            "speedup": median_ms(eager_t) / median_ms(fast_t), "first_call_s": first_s,
            "max_abs_diff": float(diff.max()), "bit_identical": bool(torch.equal(fast, eager)),
            "max_abs_eager": float(eager.float().abs().max()), "eager_peak_above_mb": peak_mb,
            "raw_s": {"eager": eager_t, "fast": fast_t},
        })
    table = markdown(
        ["batch", "eager sample_actions (ms)", "fast path (ms)", "speed-up", "first call (s)", "max abs diff (fast vs eager)", "bit-identical",
         "eager peak MB above"],
        [[str(r["batch_size"]), fmt(r["eager_ms"]), fmt(r["fast_ms"]), fmt(r["speedup"], 2), fmt(r["first_call_s"], 2),
          f"{r['max_abs_diff']:.2g}", "yes" if r["bit_identical"] else "no",
          fmt(r["eager_peak_above_mb"], 0)] for r in rows],
    )
    hw = hardware(device)
    out = write_json(a.out, {
        "benchmark": "teacher_sampling", "hardware": hw, "mode": sampler.mode, "sampler_stats": sampler.stats,
        "settings": {"smoke": a.smoke, "batch_sizes": a.batch_sizes, "steps": a.steps, "repeats": a.repeats,
                     "chunk_size": cfg.chunk_size, "num_vlm_layers": cfg.num_vlm_layers, "layout": "lerobot", "cameras": 1},
        "rows": rows, "table": table, "wall_s": time.perf_counter() - t_start,
    })
    print(f"# Teacher sampling @{a.steps} steps ({'smoke: tiny backbone' if a.smoke else 'smolvla_base architecture, random weights'})")
    print(f"hardware: {hardware_line(hw)}; fast path: {sampler.mode}; sampler stats {sampler.stats}; "
          f"median of {a.repeats}; json: {out}")
    print()
    print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
