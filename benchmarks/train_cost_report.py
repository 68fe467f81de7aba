"""``train_cost.py``'s tables and targets, from the rows its child processes measured (also read
by ``benchmarks/gpu.sh`` for its summary)."""

from __future__ import annotations

from train_cost_step import PHASES, SHARED


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
