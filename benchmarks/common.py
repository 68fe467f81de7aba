"""Shared pieces of the benchmarks: hardware description, timing, tables, JSON output, option errors.

Run the benchmarks from the repository root (``python benchmarks/latency.py ...``); they import
``hub_reflow`` from the environment and this module from their own folder.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

RESULTS = Path(__file__).resolve().parent / "results"


class OptionError(SystemExit):
    """A bad command-line option: one line on stderr, exit status 2."""

    def __init__(self, prog: str, msg: str):
        print(f"{prog}: error: {msg}", file=sys.stderr)
        super().__init__(2)


def reused_run(prog: str, out: Path, rcfg) -> bool:
    """Whether ``out`` already holds a ``hub-reflow train`` run of ``rcfg`` (``ReflowConfig``), which a
    benchmark then reuses; a run made with other settings (an older default) is refused: one line, exit 2."""
    lineage = out / "checkpoints" / "last" / "pretrained_model" / "reflow_lineage.json"
    if not lineage.exists():
        return False
    from hub_reflow.config import ReflowConfig
    from hub_reflow.training.plan import RESUME_MAY_CHANGE

    done, want = ReflowConfig.from_dict(json.loads(lineage.read_text())["reflow"]).to_dict(), rcfg.to_dict()
    differ = [f"{k} {done[k]!r}, now {want[k]!r}" for k in want if k not in RESUME_MAY_CHANGE and done[k] != want[k]]
    if differ:
        raise OptionError(prog, f"{out} holds a run with other settings ({'; '.join(differ)}); pass another --workdir")
    return True


def hub_env(argv: list[str] | None, default_workdir: Path, *, private_cache: bool = True) -> None:
    """Offline Hub settings, and with ``private_cache`` the tiny backbone's private HF cache under
    ``--workdir`` (``default_workdir`` when not given). Call it first in ``main``: ``huggingface_hub``
    reads these when it is imported, and importing ``hub_reflow`` (for option checks) imports it."""
    if "huggingface_hub" in sys.modules:
        raise RuntimeError("hub_env() must run before huggingface_hub is imported")
    if private_cache:
        import argparse

        pre = argparse.ArgumentParser(add_help=False)
        pre.add_argument("--workdir", type=Path, default=default_workdir)
        early, _ = pre.parse_known_args(argv)
        os.environ["HF_HOME"] = str(early.workdir.resolve() / "hf_home")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_XET", "1")


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


def setup_device(device: str, prog: str):
    """``auto`` picks CUDA when visible; CPU threads are set to the usable cores, or to
    ``OMP_NUM_THREADS`` when set (on a shared machine more threads than free cores spin and thrash)."""
    import torch

    from hub_reflow.devices import resolve_device
    from hub_reflow.errors import UserError

    try:
        device = resolve_device(device)  # the package's one device rule
    except UserError as e:
        raise OptionError(prog, str(e)) from None
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or usable_cores()))
    return torch.device(device)


def hardware(device) -> dict:
    import torch

    info = {
        "device": device.type,
        "cpu": cpu_name(),
        "cpu_cores_usable": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        # Other work on the machine shares the cores: the 1-minute load average when measured.
        "load_average_1m": os.getloadavg()[0],
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    try:
        import lerobot
        import transformers

        info["lerobot"] = getattr(lerobot, "__version__", None)
        info["transformers"] = transformers.__version__
    except ImportError:
        pass
    return info


def hardware_line(hw: dict) -> str:
    if hw["device"] == "cuda":
        return f"{hw['gpu']} (CUDA {hw['cuda']}), torch {hw['torch']}"
    return f"CPU {hw['cpu']}, {hw['torch_threads']} threads, torch {hw['torch']}"


def sync(device) -> None:
    import torch

    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: Callable[[], object], device, *, warmup: int, repeats: int) -> list[float]:
    """Wall times in seconds of ``repeats`` calls after ``warmup`` discarded ones (device synced)."""
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return times


def median_ms(times: list[float]) -> float:
    return 1000 * statistics.median(times)


def stat_ms(times: list[float], stat: str) -> float:
    """``median`` or ``min`` (best of the repeats: the least disturbed run on a shared machine), in ms."""
    return 1000 * (min(times) if stat == "min" else statistics.median(times))


def command_line() -> str:
    return " ".join(shlex.quote(a) for a in [Path(sys.executable).name, *sys.argv])


def markdown(header: list[str], rows: list[list[str]], align: str | None = None) -> str:
    align = align or "l" + "r" * (len(header) - 1)
    sep = ["---:" if a == "r" else "---" for a in align]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(sep) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def fmt(x: float | None, digits: int = 1) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.{digits}f}"


def write_json(path: Path, payload: dict) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "command": command_line(), **payload}
    tmp = path.with_suffix(path.suffix + ".tmp")
    from hub_reflow.safeio import dumps  # strict JSON: a NaN measurement is null, never a bare NaN token

    tmp.write_text(dumps(payload, indent=2) + "\n")
    os.replace(tmp, path)
    return path


def quiet_imports() -> None:
    """LeRobot warns at import, with a long traceback, when FFmpeg is missing: we read no videos."""
    import logging
    import warnings

    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", message=".*torchcodec.*")


# ---- operator counts and profiles (train_cost.py) ----------------------------------------------------


def op_counter():
    """A ``TorchDispatchMode`` counting aten operator calls by name: forward, autograd's backward
    (it carries the mode to its worker threads) and the optimizer alike. One call per operator
    dispatched, whatever the device: a hardware-free proxy for kernel launches (a CUDA-graph replay
    dispatches none)."""
    from collections import Counter

    from torch.utils._python_dispatch import TorchDispatchMode

    class OpCounter(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.counts: Counter = Counter()

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            self.counts[func.name()] += 1
            return func(*args, **(kwargs or {}))

    return OpCounter()


def count_cuda_syncs(fn: Callable[[], object]) -> int:
    """Synchronising CUDA calls made by ``fn()``, counted with CUDA's sync debug mode (warn)."""
    import warnings

    import torch

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            fn()
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchroniz" in str(w.message).lower() for w in caught)


# Host-side CUDA calls that start work on the GPU.
KERNEL_LAUNCHES = ("cudaLaunchKernel", "cudaLaunchKernelExC", "cuLaunchKernel", "cuLaunchKernelEx",
                   "cudaLaunchCooperativeKernel")
GRAPH_LAUNCHES = ("cudaGraphLaunch", "cuGraphLaunch")


def profile_summary(prof, steps: int, top: int = 15) -> dict:
    """Top operators by self CPU and self device time, and launches per step, from a finished
    ``torch.profiler.profile`` that covered ``steps`` steps."""
    averages = prof.key_averages()

    def device_us(e) -> float:
        return float(getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0) or 0)

    def row(e, dev: bool) -> dict:
        return {"op": e.key, "calls_per_step": e.count / steps,
                "self_cpu_ms_per_step": e.self_cpu_time_total / 1000 / steps,
                "self_device_ms_per_step": device_us(e) / 1000 / steps if dev else None}

    def on_device(e) -> bool:  # a kernel or memcpy executed on the GPU (not a host-side operator)
        return str(getattr(e, "device_type", "")).upper().endswith("CUDA")

    host = [e for e in averages if not on_device(e)]
    out = {"steps": steps,
           "top_cpu": [row(e, False) for e in sorted(host, key=lambda e: e.self_cpu_time_total, reverse=True)[:top]],
           "cpu_time_ms_per_step": sum(e.self_cpu_time_total for e in host) / 1000 / steps}
    by_name = {e.key: e.count for e in averages}
    kernels = [e for e in averages if on_device(e)]
    if kernels:
        # Host operators by the device time of the kernels they launched ("Self CUDA" in torch's table).
        out["top_device"] = [row(e, True) for e in sorted(host, key=device_us, reverse=True)[:top]]
        out["kernel_launches_per_step"] = sum(by_name.get(n, 0) for n in KERNEL_LAUNCHES) / steps
        out["graph_launches_per_step"] = sum(by_name.get(n, 0) for n in GRAPH_LAUNCHES) / steps
        out["gpu_kernels_per_step"] = sum(e.count for e in kernels) / steps
        out["device_time_ms_per_step"] = sum(device_us(e) for e in kernels) / 1000 / steps
    return out


def host_ops(prof, steps: int) -> dict:
    """Per host-side aten operator (and CUDA launch call): ``[calls per step, self CPU us per step]``."""
    keep = ("aten::", "cudaLaunchKernel", "cuLaunchKernel", "cudaMemcpyAsync")
    return {e.key: [e.count / steps, e.self_cpu_time_total / steps] for e in prof.key_averages()
            if e.key.startswith(keep) and e.count and not str(getattr(e, "device_type", "")).upper().endswith("CUDA")}


def host_cost_ratio(ops: dict, reference: dict, top: int = 6) -> dict:
    """What the reference step's aten operators would cost at this step's per-call host prices,
    over the reference's cost (1.0: every shared operator costs the same per call), with the
    per-call ratio of the reference's ``top`` dearest operators (and of ``cudaLaunchKernel``)."""
    shared = [k for k in reference if k.startswith("aten::") and k in ops and ops[k][0] and reference[k][0]]
    if not shared:
        return {"ratio": None, "ops": 0, "by_op": {}}
    here = sum(reference[k][0] * ops[k][1] / ops[k][0] for k in shared)
    there = sum(reference[k][1] for k in shared)
    dearest = sorted(shared, key=lambda k: reference[k][1], reverse=True)[:top]
    by_op = {k: (ops[k][1] / ops[k][0]) / (reference[k][1] / reference[k][0]) for k in dearest if reference[k][1]}
    if "cudaLaunchKernel" in ops and "cudaLaunchKernel" in reference and reference["cudaLaunchKernel"][1]:
        r, o = reference["cudaLaunchKernel"], ops["cudaLaunchKernel"]
        by_op["cudaLaunchKernel"] = (o[1] / o[0]) / (r[1] / r[0])
    return {"ratio": here / there if there else None, "ops": len(shared), "by_op": by_op}
