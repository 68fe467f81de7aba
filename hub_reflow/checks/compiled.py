"""Chunk latency through LeRobot's own compile path, as a robot would run a checkpoint.

``SmolVLAConfig.compile_model`` makes LeRobot wrap ``VLAFlowMatching.sample_actions`` in
``torch.compile(mode=compile_mode)`` when it builds the policy (and set float32 matmul precision to
"high"); a robot then calls ``predict_action_chunk`` once per observation at batch size 1. Here each
checkpoint is loaded that way and timed so, through its own saved preprocessor:

- ``first_call_s``: the first call (Dynamo tracing, Inductor code generation, CUDA-graph recording
  with ``reduce-overhead``): the compile cost, reported apart;
- ``warmup_s``: the next few calls (``reduce-overhead`` records its graphs on the second call);
- ``steady_ms``: median of ``repeats`` calls after that: the latency on the robot;
- ``eager_ms``: the same checkpoint loaded without ``compile_model``, timed the same way in the same
  process, and ``max_abs_diff_vs_eager`` between the two chunks for the same noise;
- ``fast_ms``: that eager policy through ``hub_reflow.fast_inference`` (the whole chunk as CUDA
  graphs, captured on its first call, ``fast_first_call_s``; no Inductor), timed the same way.

The step count is the checkpoint's own ``num_steps`` (the student's 1-2, the teacher's 10). Nothing
here trusts recorded numbers; every figure is measured now, on the device named in the result.
"""

from __future__ import annotations

import statistics
import time
from contextlib import contextmanager
from pathlib import Path

import torch

from ..checkpoint import load_smolvla, read_policy_config
from ..devices import resolve_device
from ..errors import UserError
from ..inference import fast_inference

DEFAULT_MODE = "reduce-overhead"
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
TASK = "pick up the cube"  # any instruction: latency does not depend on the words


def device_name(device: torch.device) -> str:
    """The device in words: the GPU's name, or the CPU's model and the threads used."""
    import platform

    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda}), torch {torch.__version__}"
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name"))
    except (OSError, StopIteration):
        pass
    return f"CPU {cpu}, {torch.get_num_threads()} threads, torch {torch.__version__}"


def synthetic_observation(config, seed: int = 0) -> dict:
    """One raw observation with the checkpoint's input features (images in [0, 1], a state, an
    instruction): what a robot hands the preprocessor. Latency does not depend on the values."""
    g = torch.Generator().manual_seed(seed)
    obs = {}
    for key, feat in config.input_features.items():
        if key.startswith("observation.images.empty_camera_"):
            continue  # SmolVLA fills these itself
        if key.startswith("observation.images."):
            obs[key] = torch.rand(1, *feat.shape, generator=g)
        else:
            obs[key] = torch.randn(1, *feat.shape, generator=g)
    obs["task"] = [TASK]
    return obs


def load(folder: Path, device: torch.device, compile_mode: str | None):
    """The checkpoint's policy and preprocessor, built by LeRobot; with ``compile_mode``, through
    LeRobot's own compile path (``compile_model=True``)."""
    from lerobot.policies.factory import make_pre_post_processors

    cfg = read_policy_config(folder)
    cfg.compile_model = compile_mode is not None
    if compile_mode is not None:
        cfg.compile_mode = compile_mode
    policy = load_smolvla(folder, device=device.type, config=cfg).eval()
    pre, _ = make_pre_post_processors(cfg, pretrained_path=str(folder),
                                      preprocessor_overrides={"device_processor": {"device": device.type}})
    return policy, pre


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_chunks(policy, obs: dict, noise: torch.Tensor, device: torch.device, *, warmup: int, repeats: int) -> dict:
    """First call, warm-up calls and steady-state calls of ``predict_action_chunk`` (batch 1)."""
    policy.reset()

    def call():
        out = policy.predict_action_chunk(dict(obs), noise=noise)
        _sync(device)
        return out

    t0 = time.perf_counter()
    chunk = call()
    first = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(warmup):
        call()
    warm = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return {"first_call_s": first, "warmup_s": warm, "steady_ms": 1000 * statistics.median(times),
            "min_ms": 1000 * min(times), "raw_ms": [1000 * t for t in times], "chunk": chunk}


@contextmanager
def _matmul_precision_kept():
    """LeRobot's compile path sets float32 matmul precision to "high" for the whole process; the
    compiled measurement runs so (as on a robot), later eager measurements do not."""
    old = torch.get_float32_matmul_precision()
    try:
        yield
    finally:
        torch.set_float32_matmul_precision(old)


def measure_checkpoint(folder: Path, device: torch.device, mode: str, *, warmup: int = 3, repeats: int = 20,
                       seed: int = 0) -> dict:
    """Eager, then compiled, one checkpoint; the same observation and noise for both."""
    policy, pre = load(folder, device, None)
    obs = pre(synthetic_observation(policy.config, seed))
    cfg = policy.config
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(seed + 1)).to(device)
    eager = time_chunks(policy, obs, noise, device, warmup=warmup, repeats=repeats)
    fast_policy = fast_inference(policy)  # the whole chunk as CUDA graphs, no Inductor (inference.py)
    fast = time_chunks(fast_policy, obs, noise, device, warmup=warmup, repeats=repeats)
    fast_stats = dict(fast_policy.stats)
    fast_mode = fast_policy.mode
    del policy, fast_policy
    with _matmul_precision_kept():
        policy, _ = load(folder, device, mode)
        compiled = time_chunks(policy, obs, noise, device, warmup=warmup, repeats=repeats)
        del policy
    return {
        "steps": cfg.num_steps,
        "eager_ms": eager["steady_ms"],
        "compiled_ms": compiled["steady_ms"],
        "compile_speedup": eager["steady_ms"] / compiled["steady_ms"],
        "first_call_s": compiled["first_call_s"],
        "warmup_s": compiled["warmup_s"],
        "eager_first_call_s": eager["first_call_s"],
        "max_abs_diff_vs_eager": float((compiled["chunk"].float() - eager["chunk"].float()).abs().max()),
        "fast_ms": fast["steady_ms"],
        "fast_first_call_s": fast["first_call_s"],
        "fast_capture_s": fast_stats["capture_s"],
        "fast_mode": fast_mode,
        "fast_max_abs_diff_vs_eager": float((fast["chunk"].float() - eager["chunk"].float()).abs().max()),
        "raw_ms": {"eager": eager["raw_ms"], "compiled": compiled["raw_ms"], "fast": fast["raw_ms"]},
    }


def measure(student: Path, teacher: Path | None, *, device: str = "auto", mode: str = DEFAULT_MODE,
            warmup: int = 3, repeats: int = 20) -> dict:
    """Student (and teacher) through LeRobot's compile path: compile time, steady-state latency,
    speed-up over eager and of the student over the teacher."""
    if mode not in COMPILE_MODES:
        raise UserError(f"--compile-mode must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    dev = torch.device(resolve_device(device))  # the package's one device rule
    out = {"device": dev.type, "hardware": device_name(dev), "mode": mode, "torch": torch.__version__,
           "batch_size": 1, "warmup": warmup, "repeats": repeats, "statistic": "median",
           "student": measure_checkpoint(Path(student), dev, mode, warmup=warmup, repeats=repeats)}
    if teacher is not None:
        out["teacher"] = measure_checkpoint(Path(teacher), dev, mode, warmup=warmup, repeats=repeats)
        out["speedup_compiled"] = out["teacher"]["compiled_ms"] / out["student"]["compiled_ms"]
        out["speedup_eager"] = out["teacher"]["eager_ms"] / out["student"]["eager_ms"]
    return out


def summary(result: dict) -> str:
    """One line for ``verify``."""
    s = result["student"]
    line = (f"torch.compile(mode={result['mode']}) through LeRobot's compile_model on {result['hardware']}, batch 1: "
            f"student @{s['steps']} {s['compiled_ms']:.1f} ms compiled vs {s['eager_ms']:.1f} ms eager "
            f"(x{s['compile_speedup']:.2f}; first call {s['first_call_s']:.1f} s)")
    t = result.get("teacher")
    if t:
        line += (f"; teacher @{t['steps']} {t['compiled_ms']:.1f} ms compiled vs {t['eager_ms']:.1f} ms eager "
                 f"(first call {t['first_call_s']:.1f} s); student speed-up over teacher: compiled "
                 f"x{result['speedup_compiled']:.2f}, eager x{result['speedup_eager']:.2f}")
    diffs = [r["max_abs_diff_vs_eager"] for r in (s, t) if r]
    line += f"; compiled vs eager chunk: max abs difference {max(diffs):.2g} (normalised units)"
    if "fast_ms" in s:
        line += (f"; hub_reflow.fast_inference ({s['fast_mode']}): student @{s['steps']} {s['fast_ms']:.1f} ms, first "
                 f"call {s['fast_first_call_s']:.1f} s, max abs difference to eager {s['fast_max_abs_diff_vs_eager']:.2g}")
    return line

