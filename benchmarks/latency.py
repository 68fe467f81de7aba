"""Latency of one SmolVLA action chunk at real size, split into prefix (VLM + KV cache) and
per-Euler-step action-expert time, at 1, 2, 4 and 10 steps.

The model is SmolVLA with the ``smolvla_base`` architecture (16 of the 32 layers of a
SmolVLM2-500M-Video-Instruct backbone, expert width 0.75, chunk 50, 32-d padded state/action,
512x512 images) with random weights: latency does not depend on the values. Nothing is downloaded:
the backbone folder (config from the published SmolVLM2-500M-Video-Instruct values, a word-level
tokenizer with SmolVLA's special tokens and the published vocabulary size, random bf16 weights) is
written locally once (``--workdir``) and LeRobot builds the policy from it exactly as it builds
``smolvla_base``: ``load_vlm_weights=true`` loads the VLM in bf16 and makes the expert from the
VLM's text config. A second layout, ``fp32`` (``load_vlm_weights=false``: LeRobot builds
everything in float32), is measured as an extra row.

Per chunk (batch size 1, ``torch.inference_mode``, warm-up calls discarded, median (or, with --stat min, best) of repeats):

- total: ``SmolVLAPolicy.predict_action_chunk`` (image resize/normalise, prefix, Euler loop);
- prefix: ``prepare_images`` + ``embed_prefix`` + the VLM forward that fills the KV cache;
- step: one ``denoise_step`` (the action expert attending to the cache);
- structural limit of the k-step / 10-step ratio: ``(prefix + k*step) / (prefix + 10*step)``,
  beside the measured ratio ``total_k / total_10``.

    python benchmarks/latency.py                 # real size, 1 and 3 cameras, both layouts
    python benchmarks/latency.py --smoke         # the tiny test backbone, seconds (CI)
    python benchmarks/latency.py --compile       # + LeRobot's compiled path (compile_model), steps 1 and 10

``--compile``: each (layout, cameras, steps) is also built with ``compile_model=True`` and
``compile_mode`` (default ``reduce-overhead``: CUDA graphs), LeRobot's own ``torch.compile`` of
``sample_actions``, and timed through ``predict_action_chunk`` in its own process: the first call
(the compile) apart, then ``--warmup`` calls, then the median of ``--repeats``; speed-up against the
eager row of the same run. A compile that runs past ``--compile-timeout`` seconds is recorded as
such (LeRobot compiles the Euler loop unrolled: 10 steps compile far longer than 1).

Prints a markdown table last; writes JSON (``--out``) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import (  # noqa: E402
    RESULTS,
    OptionError,
    fmt,
    hardware,
    hardware_line,
    markdown,
    quiet_imports,
    setup_device,
    stat_ms,
    time_call,
    write_json,
)
from latency_paths import compiled_child, compiled_table, fast_table, measure_compiled, measure_fast  # noqa: E402
from real_size import (  # noqa: E402, F401 (importable from latency as before)
    ACTION_DIM,
    SMOLVLA_BASE,
    STATE_DIM,
    TASK,
    make_batch,
    policy_config,
    write_real_size_backbone,
)

PROG = "latency.py"
STEPS = (1, 2, 4, 10)


def dtype_layout(policy) -> dict:
    """Parameter count per dtype in the VLM, the action expert and the rest (projections)."""
    import torch

    out: dict[str, dict[str, int]] = {"vlm": {}, "expert": {}, "projections": {}}
    for name, p in policy.named_parameters():
        group = "vlm" if ".vlm_with_expert.vlm." in name else "expert" if ".lm_expert." in name else "projections"
        key = str(p.dtype).replace("torch.", "")
        out[group][key] = out[group].get(key, 0) + p.numel()
    return out



def prefix_fn(policy, batch: dict):
    """What ``sample_actions`` does before its Euler loop: images, state, prefix embedding, KV cache."""
    import torch

    from lerobot.policies.common.vla_utils import make_att_2d_masks
    from lerobot.utils.constants import OBS_LANGUAGE_ATTENTION_MASK, OBS_LANGUAGE_TOKENS

    model = policy.model
    images, img_masks = policy.prepare_images(batch)
    state = policy.prepare_state(batch)
    embs, pad_masks, att_masks = model.embed_prefix(
        images, img_masks, batch[OBS_LANGUAGE_TOKENS], batch[OBS_LANGUAGE_ATTENTION_MASK], state=state)
    att_2d = make_att_2d_masks(pad_masks, att_masks)
    _, cache = model.vlm_with_expert.forward(
        attention_mask=att_2d, position_ids=torch.cumsum(pad_masks, dim=1) - 1, past_key_values=None,
        inputs_embeds=[embs, None], use_cache=model.config.use_cache)
    return pad_masks, cache


def measure(policy, cameras: int, device: torch.device, steps: tuple[int, ...], repeats: int, warmup: int,
            stat: str = "median") -> dict:
    import torch

    from hub_reflow.smolvla import num_steps

    cfg = policy.config
    batch = make_batch(policy, cameras, device)
    noise = torch.randn(1, cfg.chunk_size, cfg.max_action_dim, generator=torch.Generator().manual_seed(1)).to(device)
    with torch.inference_mode():
        # One untimed pass through prefix and expert warms this configuration up; --warmup adds
        # discarded calls before each measurement.
        pad_masks, cache = prefix_fn(policy, batch)
        t1 = torch.ones(1, dtype=torch.float32, device=device)
        policy.model.denoise_step(prefix_pad_masks=pad_masks, past_key_values=cache, x_t=noise, timestep=t1)
        prefix_t = time_call(lambda: prefix_fn(policy, batch), device, warmup=warmup, repeats=repeats)
        step_t = time_call(lambda: policy.model.denoise_step(prefix_pad_masks=pad_masks, past_key_values=cache,
                                                             x_t=noise, timestep=t1),
                           device, warmup=warmup, repeats=3 * repeats)
        totals = {}
        for k in steps:
            with num_steps(policy, k):
                totals[k] = time_call(lambda: policy.predict_action_chunk(dict(batch), noise=noise),
                                      device, warmup=warmup, repeats=repeats)
    return {"prefix_tokens": int(pad_masks.shape[1]), "lang_tokens": int(batch["observation.language.tokens"].shape[1]),
            "prefix_ms": stat_ms(prefix_t, stat), "step_ms": stat_ms(step_t, stat),
            "total_ms": {k: stat_ms(v, stat) for k, v in totals.items()},
            "raw_s": {"prefix": prefix_t, "step": step_t, **{f"total@{k}": v for k, v in totals.items()}}}


LAYOUTS = {
    "lerobot": "load_vlm_weights=true: VLM + expert bf16, projections fp32 (as LeRobot builds smolvla_base)",
    "fp32": "load_vlm_weights=false: everything fp32",
}


def parse_args(argv=None):
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="the tiny test backbone and config (seconds; for CI)")
    p.add_argument("--cameras", default="1,3", help="comma-separated camera counts (default 1,3)")
    p.add_argument("--layouts", default="lerobot,fp32", help=f"comma-separated, from {','.join(LAYOUTS)}")
    p.add_argument("--repeats", type=int, default=5, help="timed calls per measurement (their median, or min, is reported)")
    p.add_argument("--warmup", type=int, default=0,
                   help="discarded calls before each measurement (one untimed prefix + step pass is always made)")
    p.add_argument("--stat", choices=["median", "min"], default="median",
                   help="statistic of the repeats reported (min: best of, for a machine shared with other work)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--workdir", type=Path, default=Path("outputs/bench"), help="where the backbone folder is written once")
    p.add_argument("--out", type=Path, default=RESULTS / "latency" / "latency.json")
    p.add_argument("--no-png", action="store_true")
    p.add_argument("--compile", action="store_true", help="also time LeRobot's compiled path (compile_model)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"])
    p.add_argument("--compile-steps", default="1,10", help="comma-separated Euler step counts compiled (default 1,10)")
    p.add_argument("--compile-timeout", type=float, default=600.0,
                   help="seconds one compiled measurement (load, compile, timing) may take before it is recorded as not finished")
    p.add_argument("--compile-budget", type=float, default=None,
                   help="seconds all compiled measurements together may take (each gets at most what is left)")
    p.add_argument("--fast", action="store_true",
                   help="also time hub_reflow.fast_inference (the whole chunk as one CUDA graph on CUDA) at --fast-steps")
    p.add_argument("--fast-steps", default="1,2", help="comma-separated Euler step counts for --fast (default 1,2)")
    p.add_argument("--compile-child", default=None, help=argparse.SUPPRESS)  # one compiled measurement
    a = p.parse_args(argv)
    if a.compile_child:
        return a
    try:
        a.cameras = [int(c) for c in a.cameras.split(",")]
    except ValueError:
        raise OptionError(PROG, f"--cameras must be comma-separated integers, got {a.cameras!r}") from None
    if not a.cameras or any(c < 1 or c > 8 for c in a.cameras):
        raise OptionError(PROG, f"--cameras: each count must be between 1 and 8, got {a.cameras}")
    a.layouts = a.layouts.split(",")
    bad = [x for x in a.layouts if x not in LAYOUTS]
    if bad or not a.layouts:
        raise OptionError(PROG, f"--layouts: unknown {bad}; choose from {','.join(LAYOUTS)}")
    if a.repeats < 1 or a.warmup < 0:
        raise OptionError(PROG, "--repeats must be >= 1 and --warmup >= 0")
    try:
        a.compile_steps = [int(k) for k in a.compile_steps.split(",")]
    except ValueError:
        raise OptionError(PROG, f"--compile-steps must be comma-separated integers, got {a.compile_steps!r}") from None
    try:
        a.fast_steps = [int(k) for k in a.fast_steps.split(",")]
    except ValueError:
        raise OptionError(PROG, f"--fast-steps must be comma-separated integers, got {a.fast_steps!r}") from None
    if not a.compile_steps or min(a.compile_steps) < 1 or a.compile_timeout <= 0 or min(a.fast_steps, default=0) < 1:
        raise OptionError(PROG, "--compile-steps and --fast-steps must be >= 1 each and --compile-timeout > 0")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    if a.compile_child:
        quiet_imports()
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        print("RESULT " + json.dumps(compiled_child(json.loads(a.compile_child))), flush=True)
        return 0
    import torch

    device = setup_device(a.device, PROG)
    quiet_imports()

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    t_start = time.perf_counter()
    load_at_start = os.getloadavg()[0]
    if a.smoke:
        from hub_reflow.testing.tiny_world import make_tiny_backbone

        backbone = a.workdir / "tiny-smolvlm"
        if not (backbone / "config.json").exists():
            make_tiny_backbone(backbone)
    else:
        print(f"backbone: {a.workdir / 'smolvlm2-500m-shape'} (written once, ~1 GB)", file=sys.stderr)
        backbone = write_real_size_backbone(a.workdir / "smolvlm2-500m-shape")

    rows, layouts, fast_rows = [], {}, []
    for layout in a.layouts:
        torch.manual_seed(0)
        cfg = policy_config(backbone, smoke=a.smoke, cameras=max(a.cameras), layout=layout, device=device)
        policy = SmolVLAPolicy(cfg).to(device).eval()
        layouts[layout] = {"description": LAYOUTS[layout], "parameters": dtype_layout(policy)}
        for cams in a.cameras:
            print(f"measuring layout={layout} cameras={cams}", file=sys.stderr, flush=True)
            m = measure(policy, cams, device, STEPS, a.repeats, a.warmup, a.stat)
            p, s, tot = m["prefix_ms"], m["step_ms"], m["total_ms"]
            for k in STEPS:
                rows.append({
                    "name": f"{layout} {cams}cam @{k}", "layout": layout, "cameras": cams, "steps": k,
                    "total_ms": tot[k], "prefix_ms": p, "step_ms": s,
                    "measured_ratio_vs_10": tot[k] / tot[10], "structural_ratio_vs_10": (p + k * s) / (p + 10 * s),
                    "speedup_vs_10": tot[10] / tot[k], "prefix_tokens": m["prefix_tokens"], "lang_tokens": m["lang_tokens"],
                    "raw_s": m["raw_s"],
                })
            if a.fast:
                print(f"fast path layout={layout} cameras={cams} steps={a.fast_steps}", file=sys.stderr, flush=True)
                fast_rows += measure_fast(policy, layout, cams, device, a.fast_steps, a.repeats, a.warmup, a.stat, rows)
            _write(a, device, load_at_start, rows, layouts, cfg, t_start, partial=True, fast_rows=fast_rows)
        del policy
    compiled_rows = []
    if a.compile:
        t_compile = time.perf_counter()
        for layout in a.layouts:
            for cams in a.cameras:
                for k in a.compile_steps:
                    left = a.compile_timeout if a.compile_budget is None else \
                        min(a.compile_timeout, a.compile_budget - (time.perf_counter() - t_compile))
                    print(f"compiling layout={layout} cameras={cams} steps={k} (mode {a.compile_mode}, at most {left:.0f} s)",
                          file=sys.stderr, flush=True)
                    compiled_rows.append(measure_compiled(a, backbone, layout, cams, k, device, rows, max(left, 1.0)))
                    _write(a, device, load_at_start, rows, layouts, cfg, t_start, partial=True, compiled_rows=compiled_rows,
                           fast_rows=fast_rows)
    out, table, hw = _write(a, device, load_at_start, rows, layouts, cfg, t_start, partial=False, compiled_rows=compiled_rows,
                            fast_rows=fast_rows)
    if not a.no_png:
        _plot(rows, out.with_suffix(".png"), hardware_line(hw))
    print(f"# SmolVLA chunk latency ({'smoke: tiny backbone' if a.smoke else 'smolvla_base architecture, random weights'})")
    print(f"hardware: {hardware_line(hw)}; load average {load_at_start:.1f} at start, {hw['load_average_1m']:.1f} at end; "
          f"batch 1; {a.stat} of {a.repeats} repeats (raw times in the JSON); json: {out}")
    for name, info in layouts.items():
        print(f"layout {name}: {info['description']}; parameters by dtype: {json.dumps(info['parameters'])}")
    print()
    print(table)
    if a.fast:
        print()
        print(f"hub_reflow.fast_inference, batch 1, {a.stat} of {a.repeats} after the capturing first call:")
        print()
        print(fast_table(fast_rows))
    if a.compile:
        print()
        print(f"LeRobot's compiled path (compile_model=True, compile_mode={a.compile_mode}), batch 1, "
              f"{a.stat if a.stat == 'min' else 'median'} of {a.repeats} after {max(a.warmup, 3)} warm-up calls:")
        print()
        print(compiled_table(compiled_rows))
    return 0


def _write(a, device, load_at_start, rows, layouts, cfg, t_start, *, partial: bool, compiled_rows=None, fast_rows=None):
    """The JSON (rewritten after each measured group, so an interrupted run keeps what it measured)."""
    hw = hardware(device)
    hw["load_average_1m_at_start"] = load_at_start
    settings = {"smoke": a.smoke, "cameras": a.cameras, "layouts": a.layouts, "steps": list(STEPS),
                "repeats": a.repeats, "warmup": a.warmup, "stat": a.stat, "batch_size": 1, "task": TASK,
                "image_size": list(cfg.resize_imgs_with_padding), "chunk_size": cfg.chunk_size,
                "num_vlm_layers": cfg.num_vlm_layers, "expert_width_multiplier": cfg.expert_width_multiplier,
                "backbone": "tiny test SmolVLM" if a.smoke else "SmolVLM2-500M-Video-Instruct shape, random weights",
                "compile": a.compile, "compile_mode": a.compile_mode if a.compile else None,
                "compile_steps": a.compile_steps if a.compile else None,
                "compile_timeout_s": a.compile_timeout if a.compile else None}
    table = markdown(
        ["layout", "cameras", "Euler steps", "chunk (ms)", "prefix (ms)", "expert step (ms)",
         "measured k/10", "structural (p+k·s)/(p+10·s)", "speed-up vs 10"],
        [[r["layout"], str(r["cameras"]), str(r["steps"]), fmt(r["total_ms"]), fmt(r["prefix_ms"]), fmt(r["step_ms"]),
          fmt(r["measured_ratio_vs_10"], 3), fmt(r["structural_ratio_vs_10"], 3), fmt(r["speedup_vs_10"], 2)]
         for r in rows],
    )
    out = write_json(a.out, {"benchmark": "latency", "partial": partial, "hardware": hw, "settings": settings,
                             "layouts": layouts, "rows": rows, "table": table, "wall_s": time.perf_counter() - t_start,
                             **({"compiled_rows": compiled_rows, "compiled_table": compiled_table(compiled_rows)}
                                if a.compile else {}),
                             **({"fast_rows": fast_rows, "fast_table": fast_table(fast_rows)} if a.fast else {})})
    return out, table, hw


def _plot(rows: list[dict], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    groups = sorted({(r["layout"], r["cameras"]) for r in rows})
    for layout, cams in groups:
        rs = [r for r in rows if r["layout"] == layout and r["cameras"] == cams]
        line, = ax.plot([r["steps"] for r in rs], [r["total_ms"] for r in rs], "o-", label=f"{layout}, {cams} cam measured")
        ax.plot([r["steps"] for r in rs], [r["prefix_ms"] + r["steps"] * r["step_ms"] for r in rs], "--",
                color=line.get_color(), alpha=0.6, label=f"{layout}, {cams} cam prefix + k·step")
    ax.set_xlabel("Euler steps per chunk")
    ax.set_ylabel("chunk latency (ms)")
    ax.set_xticks([1, 2, 4, 10])
    ax.set_title(title, fontsize=8)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
