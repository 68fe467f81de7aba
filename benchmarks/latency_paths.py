"""``latency.py``'s two other paths of the same chunk: LeRobot's compiled one (``--compile``:
``compile_model=True``, each measurement in its own process, ``latency.py --compile-child``) and
``hub_reflow.fast_inference`` (``--fast``: the whole chunk as one CUDA graph on CUDA)."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

from common import fmt, markdown, setup_device, stat_ms, sync, time_call
from real_size import make_batch, policy_config

PROG = "latency.py"
LATENCY = Path(__file__).resolve().with_name("latency.py")  # the compiled child runs latency.py --compile-child


def compiled_child(spec: dict) -> dict:
    """One compiled measurement, in its own process: build the policy with compile_model=True
    (LeRobot wraps sample_actions in torch.compile) and time predict_action_chunk."""
    import torch
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from hub_reflow.checks.compiled import time_chunks

    device = setup_device(spec["device"], PROG)
    torch.manual_seed(0)
    cfg = policy_config(Path(spec["backbone"]), smoke=spec["smoke"], cameras=spec["cameras"], layout=spec["layout"],
                        device=device)
    cfg.compile_model, cfg.compile_mode, cfg.num_steps = True, spec["mode"], spec["steps"]
    t0 = time.perf_counter()
    policy = SmolVLAPolicy(cfg).to(device).eval()
    load_s = time.perf_counter() - t0
    batch = make_batch(policy, spec["cameras"], device)
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        r = time_chunks(policy, batch, noise, device, warmup=spec["warmup"], repeats=spec["repeats"])
    times = [t / 1000 for t in r["raw_ms"]]
    return {"load_s": load_s, "first_call_s": r["first_call_s"], "warmup_s": r["warmup_s"],
            "steady_ms": stat_ms(times, spec["stat"]), "raw_s": times}


def measure_compiled(a, backbone: Path, layout: str, cams: int, k: int, device, rows: list[dict], timeout: float) -> dict:
    import subprocess

    spec = {"backbone": str(Path(backbone).resolve()), "smoke": a.smoke, "cameras": cams, "layout": layout,
            "device": device.type, "mode": a.compile_mode, "steps": k, "repeats": a.repeats,
            # reduce-overhead records its CUDA graphs on the second call: at least 3 discarded calls
            "warmup": max(a.warmup, 3),
            "stat": a.stat}
    eager = next((r["total_ms"] for r in rows if (r["layout"], r["cameras"], r["steps"]) == (layout, cams, k)), None)
    row = {"name": f"{layout} {cams}cam @{k} compiled", "layout": layout, "cameras": cams, "steps": k,
           "compile_mode": a.compile_mode, "timeout_s": timeout, "eager_ms": eager}
    t0 = time.perf_counter()
    # Its own process group: a compile that runs out of time is stopped with its compile workers.
    proc = subprocess.Popen([sys.executable, str(LATENCY), "--compile-child", json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=os.environ,
                            start_new_session=True)
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        import signal

        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        row.update(status="timeout", wall_s=time.perf_counter() - t0, steady_ms=None, first_call_s=None,
                   speedup_vs_eager=None)
        return row
    line = next((ln for ln in stdout.splitlines() if ln.startswith("RESULT ")), None)
    if proc.returncode != 0 or line is None:
        err = (stderr.strip().splitlines() or ["no output"])[-1][:300]
        row.update(status=f"error: {err}", wall_s=time.perf_counter() - t0, steady_ms=None, first_call_s=None,
                   speedup_vs_eager=None)
        return row
    got = json.loads(line[len("RESULT "):])
    row.update(status="ok", wall_s=time.perf_counter() - t0, **got,
               speedup_vs_eager=eager / got["steady_ms"] if eager else None)
    return row


def compiled_table(rows: list[dict] | None) -> str:
    rows = rows or []
    return markdown(
        ["layout", "cameras", "Euler steps", "compiled chunk (ms)", "eager chunk (ms)", "speed-up vs eager",
         "first call (compile, s)", "status"],
        [[r["layout"], str(r["cameras"]), str(r["steps"]), fmt(r["steady_ms"]), fmt(r["eager_ms"]),
          fmt(r["speedup_vs_eager"], 2), fmt(r["first_call_s"]),
          r["status"] if r["status"] != "timeout" else f"not finished in {r['timeout_s']:.0f} s"] for r in rows],
        align="lrrrrrrl",
    )


def measure_fast(policy, layout: str, cams: int, device, steps: list[int], repeats: int, warmup: int, stat: str,
                 rows: list[dict]) -> list[dict]:
    """``hub_reflow.fast_inference(policy).predict_action_chunk`` per step count: the first call
    (capture, on CUDA) apart, then the steady latency; its chunk against LeRobot's eager one for
    the same observation and noise."""
    import torch

    from hub_reflow.inference import fast_inference
    from hub_reflow.smolvla import num_steps

    cfg = policy.config
    batch = make_batch(policy, cams, device)
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(1)).to(device)
    out = []
    for k in steps:
        fast = fast_inference(policy)
        with num_steps(policy, k), torch.no_grad():
            eager = policy.predict_action_chunk(dict(batch), noise=noise)
            sync(device)
            t0 = time.perf_counter()
            first = fast.predict_action_chunk(dict(batch), noise=noise)
            sync(device)
            first_s = time.perf_counter() - t0
            times = time_call(lambda: fast.predict_action_chunk(dict(batch), noise=noise), device,
                              warmup=warmup, repeats=repeats)
            again = fast.predict_action_chunk(dict(batch), noise=noise)
        eager_ms = next((r["total_ms"] for r in rows if (r["layout"], r["cameras"], r["steps"]) == (layout, cams, k)), None)
        ms = stat_ms(times, stat)
        out.append({"name": f"{layout} {cams}cam @{k} fast", "layout": layout, "cameras": cams, "steps": k,
                    "fast_ms": ms, "eager_ms": eager_ms, "speedup_vs_eager": eager_ms / ms if eager_ms else None,
                    "first_call_s": first_s, "capture_s": fast.stats["capture_s"], "mode": fast.mode,
                    "stats": dict(fast.stats),
                    "max_abs_diff_vs_eager": float((first.float() - eager.float()).abs().max()),
                    "replay_equal_first": bool(torch.equal(first, again)), "raw_s": times})
        del fast
    return out


def fast_table(rows: list[dict] | None) -> str:
    return markdown(
        ["layout", "cameras", "Euler steps", "fast chunk (ms)", "eager chunk (ms)", "speed-up vs eager",
         "first call (s)", "capture (s)", "max abs diff vs eager", "mode"],
        [[r["layout"], str(r["cameras"]), str(r["steps"]), fmt(r["fast_ms"]), fmt(r["eager_ms"]),
          fmt(r["speedup_vs_eager"], 2), fmt(r["first_call_s"], 2), fmt(r["capture_s"], 2),
          f"{r['max_abs_diff_vs_eager']:.3g}", r["mode"]] for r in rows or []],
        align="lrrrrrrrrl",
    )
