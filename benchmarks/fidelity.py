"""Fidelity of reflow students on the multimodal tiny worlds: does a 1-2 step student land where the
10-step teacher lands, and on a true mode of the data? And which training-time distribution gets it
there (docs/fidelity.md)?

Worlds (``hub_reflow/testing/tiny_world.py`` ``WORLDS``): ``tiny`` (one camera, 2-d state and action,
chunk 8) and ``two-camera`` (two cameras, 3-d state, 4-d action, chunk 12, max dims 6). In both the
first action dim is the unobservable side d = +-1 of the episode (bimodal) and the others are
deterministic in the state, so the two true chunks ``m_d`` of every frame are known exactly
(positions past the episode's end are left out: LeRobot pads them and trains nothing there).

Per world: a teacher trained by the real ``lerobot-train`` (``--teacher-train-steps``, default 1000);
1-step students trained by ``hub-reflow``'s own loop with its defaults except the time sampling
(``--modes``, default all four) for ``--student-train-steps`` (600) at ``--batch-size`` (8); 2-step
students (``--two-step-inputs``: trained on-policy, the default, and on straight paths;
docs/reflow.md#on-policy-inputs) and a second reflow round (the default 1-step student, run at 10 steps, as the teacher of a
new 1-step student) with the default time sampling; and the reference: a 1-step student from the
40-line loop in ``reference_loop.py`` (the same steps, batch, learning rate and time sampling, no
fp32 master weights), so a ratio that misses the target can be told apart from a loop that does.

Metrics on the held-out episodes, with shared noise (``--noises`` draws per frame):
- MSE ratio: MSE(sampler, teacher@10) / MSE(teacher at the sampler's step count, teacher@10): the
  issue's target is <= 0.01 for the 1-step student; an untrained copy scores exactly 1; also on as
  many frames of the training episodes (fresh shared noise), where the students were fitted;
- RMSE vs teacher@10 (real action units, first noise draw);
- distance to the nearest true mode (RMS over valid chunk positions and action dims) and the mode-hit
  rate (share of frame x noise draws with that distance < ``HIT``);
- straightness ``S = E_t E ||(z - x_0) - v(x_t, t)||^2`` in normalised action space, first noise
  draw. ``S_euler``: t on the sampler's own grid (0 for one step). ``S_fine``: t on 1, 0.9, ..., 0.1
  along the sampled path (Euler states joined by segments).

    python benchmarks/fidelity.py                     # both worlds, all modes (the longest run)
    python benchmarks/fidelity.py --worlds tiny --modes grid
    python benchmarks/fidelity.py --smoke             # a few steps of everything (CI)

Prints one markdown table per world and a summary; writes JSON (``--out``) and a PNG of the first
action dim's distributions per world.
"""

from __future__ import annotations

import argparse
import contextlib
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
    hub_env,
    markdown,
    quiet_imports,
    reused_run,
    setup_device,
    write_json,
)
from fidelity_metrics import (  # noqa: E402, F401 (importable from fidelity as before)
    DECAY,
    FINE_TIMES,
    HIT,
    HOLDOUT,
    plot,
    held_out,
    mode_metrics,
    path_at,
    straightness,
    true_modes,
)

PROG = "fidelity.py"
DEFAULT_WORKDIR = Path("outputs/bench/fidelity")


def parse_args(argv=None):
    from hub_reflow.config import STUDENT_INPUTS, ReflowConfig
    from hub_reflow.flow import TIME_SAMPLERS
    from hub_reflow.testing.tiny_world import WORLDS
    from hub_reflow.validation import float_in

    p = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    p.add_argument("--smoke", action="store_true", help="a few steps of everything (CI)")
    p.add_argument("--worlds", default=None, help=f"comma-separated, of {', '.join(WORLDS)} (default all; tiny with --teacher)")
    p.add_argument("--modes", default=None, help=f"time samplings of the 1-step students, of {', '.join(TIME_SAMPLERS)} "
                   "(default all; the default one only with --smoke)")
    p.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                   help="worlds and students are built here (and reused when already there)")
    p.add_argument("--teacher", type=Path, default=None,
                   help="an existing tiny-world teacher's pretrained_model/ (else one is trained by lerobot-train)")
    p.add_argument("--dataset-root", type=Path, default=None, help="the tiny dataset of --teacher")
    p.add_argument("--teacher-train-steps", type=int, default=None, help="lerobot-train steps (default 1000; smoke 20)")
    p.add_argument("--teacher-lr", type=float, default=None,
                   help="the teachers' lerobot-train optimizer_lr (default: the worlds' 1e-3; LeRobot's own default is 1e-4)")
    p.add_argument("--student-train-steps", type=int, default=None, help="reflow steps per student (default 600; smoke 3)")
    p.add_argument("--batch-size", type=int, default=8, help="reflow batch size")
    p.add_argument("--train-seed", type=int, default=None,
                   help="the students' training seed (default: hub-reflow's, ReflowConfig.seed)")
    p.add_argument("--lr", type=float_in(0), default=None, help="students' base learning rate (default: hub-reflow's, the teacher's)")
    p.add_argument("--lr-scale", type=float_in(0), default=None,
                   help="students' peak rate over the base (default: hub-reflow's, 3 for 1 step at the teacher's rate, else 1)")
    p.add_argument("--update", choices=["fp32-masters", "bf16-sr", "bf16"], default="fp32-masters",
                   help="the students' bf16 weight update (ReflowConfig.update; default fp32 masters)")
    p.add_argument("--noises", type=int, default=None, help="noise draws per frame (default 4; smoke 1)")
    p.add_argument("--two-step", action=argparse.BooleanOptionalAction, default=True, help="also a 2-step student")
    p.add_argument("--two-step-inputs", default="on-policy,straight",
                   help="the 2-step students' training inputs (student_inputs), comma-separated: on-policy, straight")
    p.add_argument("--reference", action=argparse.BooleanOptionalAction, default=True,
                   help="also a 1-step student from the reference loop (benchmarks/reference_loop.py)")
    p.add_argument("--round2", action=argparse.BooleanOptionalAction, default=None,
                   help="also a second reflow round (default: on, off in --smoke)")
    p.add_argument("--seed", type=int, default=12345, help="the shared evaluation noise")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default cpu: the tiny model is overhead-bound)")
    p.add_argument("--out", type=Path, default=RESULTS / "fidelity" / "fidelity.json")
    p.add_argument("--no-png", action="store_true")
    a = p.parse_args(argv)
    a.teacher_train_steps = a.teacher_train_steps or (20 if a.smoke else 1000)
    a.student_train_steps = a.student_train_steps or (3 if a.smoke else 600)
    a.noises = a.noises or (1 if a.smoke else 4)
    a.default_mode = ReflowConfig().time_sampling
    a.train_seed = ReflowConfig().seed if a.train_seed is None else a.train_seed
    a.modes = a.modes.split(",") if a.modes else ([a.default_mode] if a.smoke else list(TIME_SAMPLERS))
    a.worlds = a.worlds.split(",") if a.worlds else (["tiny"] if a.teacher else list(WORLDS))
    if a.round2 is None:
        a.round2 = not a.smoke
    a.two_step_inputs = a.two_step_inputs.split(",")
    # The students' peak rate over the base, by step count (hub-reflow's default when not given).
    a.lr_scales = {k: ReflowConfig(student_steps=k, lr=a.lr, lr_scale=a.lr_scale).lr_scale for k in (1, 2)}
    for si in a.two_step_inputs:
        if si not in STUDENT_INPUTS:
            raise OptionError(PROG, f"--two-step-inputs: {si!r} is not one of {', '.join(STUDENT_INPUTS)}")
    for m in a.modes:
        if m not in TIME_SAMPLERS:
            raise OptionError(PROG, f"--modes: {m!r} is not one of {', '.join(TIME_SAMPLERS)}")
    for w in a.worlds:
        if w not in WORLDS:
            raise OptionError(PROG, f"--worlds: {w!r} is not one of {', '.join(WORLDS)}")
    if min(a.teacher_train_steps, a.student_train_steps, a.batch_size, a.noises) < 1:
        raise OptionError(PROG, "--teacher-train-steps, --student-train-steps, --batch-size and --noises must be >= 1")
    if (a.teacher is None) != (a.dataset_root is None):
        raise OptionError(PROG, "--teacher and --dataset-root go together (the teacher's tiny dataset)")
    if a.teacher_lr is not None and (a.teacher is not None or a.teacher_lr <= 0):
        raise OptionError(PROG, "--teacher-lr must be > 0, and is for teachers trained here (not with --teacher)")
    if a.teacher is not None and a.worlds != ["tiny"]:
        raise OptionError(PROG, "--teacher is a tiny-world teacher: use it with --worlds tiny")
    if a.teacher is not None and not (a.teacher / "config.json").is_file():
        raise OptionError(PROG, f"--teacher {a.teacher} is not a pretrained_model/ folder (no config.json)")
    if a.dataset_root is not None and not (a.dataset_root / "meta" / "info.json").is_file():
        raise OptionError(PROG, f"--dataset-root {a.dataset_root} is not a LeRobotDataset folder")
    return a


def train_student(teacher: Path, dataset_root: Path, repo_id: str, out: Path, *, steps: int, batch_size: int,
                  student_steps: int, time_sampling: str, device: str, lr: float | None, lr_scale: float | None,
                  seed: int, student_inputs: str = "on-policy", update: str = "fp32-masters") -> Path:
    from hub_reflow.config import ReflowConfig
    from hub_reflow.train import TrainArgs, train

    rcfg = ReflowConfig(steps=steps, batch_size=batch_size, student_steps=student_steps, time_sampling=time_sampling,
                        holdout_episodes=HOLDOUT, lr=lr, lr_scale=lr_scale, seed=seed, student_inputs=student_inputs,
                        update=update)
    last = out / "checkpoints" / "last" / "pretrained_model"
    if reused_run(PROG, out, rcfg) and (last / "model.safetensors").exists():
        return last  # already trained in this workdir
    return train(TrainArgs(teacher=str(teacher), dataset=repo_id, dataset_root=dataset_root, output_dir=out, device=device,
                           log_freq=max(steps // 5, 1), progress=False, reflow=rcfg))


def evaluate_world(a, name: str, device) -> dict:
    import torch
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

    from reference_loop import bare_loop

    from hub_reflow.config import ReflowConfig
    from hub_reflow.checks.fidelity import chunk, observation_batch, rmse
    from hub_reflow.smolvla import policy_inputs
    from hub_reflow.testing.tiny_world import WORLDS, build_tiny_world

    spec = WORLDS[name]
    timings = {}
    t0 = time.perf_counter()
    if a.teacher is None:
        print(f"[{name}] world + teacher ({a.teacher_train_steps} lerobot-train steps) in {a.workdir}", file=sys.stderr, flush=True)
        world = build_tiny_world(a.workdir / "world", teacher_steps=a.teacher_train_steps, spec=spec, teacher_lr=a.teacher_lr)
        teacher, dataset_root = world.teacher, world.dataset_root
    else:
        teacher, dataset_root = a.teacher.resolve(), a.dataset_root.resolve()
    timings["world_and_teacher_s"] = time.perf_counter() - t0

    runs = a.workdir / ("runs-smoke" if a.smoke else "runs") / name / f"steps{a.student_train_steps}-b{a.batch_size}"
    if a.teacher is None and (a.teacher_lr is not None or a.teacher_train_steps != 1000):
        runs = runs.with_name(f"{runs.name}-teacher{a.teacher_train_steps}-lr{a.teacher_lr or 1e-3:g}")
    if a.lr is not None:
        runs = runs.with_name(f"{runs.name}-lr{a.lr:g}")
    if a.train_seed != ReflowConfig().seed:
        runs = runs.with_name(f"{runs.name}-seed{a.train_seed}")

    def scaled(k: int) -> str:  # a peak rate other than the base: in the folder name (an older default's runs stay apart)
        return "" if a.lr_scales[k] == 1 else f"-lrx{a.lr_scales[k]:g}"

    plan = [(f"student(1-step, {m})", runs / f"k1-{m}{scaled(1)}", teacher, 1, m, ReflowConfig().student_inputs)
            for m in a.modes]
    if a.two_step:
        plan += [(f"student(2-step, {a.default_mode}, {si})", runs / f"k2-{a.default_mode}-{si}{scaled(2)}", teacher, 2,
                  a.default_mode, si)
                 for si in a.two_step_inputs]
    students = {}
    for label, out, t, k, mode, si in plan:
        t1 = time.perf_counter()
        print(f"[{name}] {label}: {a.student_train_steps} steps at batch {a.batch_size}", file=sys.stderr, flush=True)
        students[label] = train_student(t, dataset_root, spec.repo_id, out, steps=a.student_train_steps,
                                        batch_size=a.batch_size, student_steps=k, time_sampling=mode, device=device.type,
                                        lr=a.lr, lr_scale=a.lr_scale, seed=a.train_seed, student_inputs=si, update=a.update)
        timings[f"{label}_train_s"] = time.perf_counter() - t1
    if a.reference:
        label, out = f"reference loop (1-step, {a.default_mode})", runs / f"reference-k1-{a.default_mode}"
        t1 = time.perf_counter()
        print(f"[{name}] {label}: {a.student_train_steps} steps at batch {a.batch_size}", file=sys.stderr, flush=True)
        if not (out / "reference_loop.done").exists():
            with contextlib.redirect_stdout(sys.stderr):  # LeRobot's loading messages: stdout is for the tables
                bare_loop(str(teacher), spec.repo_id, str(dataset_root), a.student_train_steps, a.batch_size,
                          a.default_mode, HOLDOUT, a.lr, a.train_seed, grid_steps=1, save_to=str(out))
        students[label] = out
        timings[f"{label}_train_s"] = time.perf_counter() - t1
    first = f"student(1-step, {a.default_mode})"
    if a.round2 and first in students:
        t1 = time.perf_counter()
        print(f"[{name}] reflow round 2: {first} at 10 steps teaches a new 1-step student", file=sys.stderr, flush=True)
        students["round-2 student(1-step)"] = train_student(
            students[first], dataset_root, spec.repo_id, runs / f"round2-k1-{a.default_mode}{scaled(1)}",
            steps=a.student_train_steps, batch_size=a.batch_size, student_steps=1, time_sampling=a.default_mode,
            device=device.type, lr=a.lr, lr_scale=a.lr_scale, seed=a.train_seed, update=a.update)
        timings["round2_train_s"] = time.perf_counter() - t1

    def load(path):
        pol = SmolVLAPolicy.from_pretrained(str(path)).to(device).eval()
        pre, post = make_pre_post_processors(pol.config, pretrained_path=str(path),
                                             preprocessor_overrides={"device_processor": {"device": device.type}})
        return pol, pre, post

    models = {"teacher": load(teacher), **{label: load(path) for label, path in students.items()}}
    samplers = [("teacher @10", "teacher", 10, "z"), ("teacher @10 (other noise)", "teacher", 10, "z_other"),
                ("teacher @2", "teacher", 2, "z"), ("teacher @1", "teacher", 1, "z")]
    for label in students:
        k = 2 if label.startswith("student(2-step") else 1
        samplers.append((f"{label} @{k}", label, k, "z"))
    if a.round2 and first in students:
        samplers.append((f"{first} @10", first, 10, "z"))

    cfg = models["teacher"][0].config
    adim = cfg.action_feature.shape[0]
    ds, start, idx, raw, modes, valid = held_out(spec, dataset_root, cfg.chunk_size, stride=5 if a.smoke else 1)
    g = torch.Generator().manual_seed(a.seed)
    shape = (len(idx), cfg.chunk_size, cfg.max_action_dim)
    draws = [{"z": torch.randn(*shape, generator=g), "z_other": torch.randn(*shape, generator=g)} for _ in range(a.noises)]

    outs = {}  # sampler name -> list of chunks, one per draw
    for sname, model, k, nz in samplers:
        pol, pre, post = models[model]
        outs[sname] = [chunk(pol, pre, post, raw, d[nz].to(device), k).cpu() for d in draws]
    mse = lambda xs, ys: sum(float(((x - y) ** 2).mean()) for x, y in zip(xs, ys, strict=True)) / len(xs)  # noqa: E731
    ref = outs["teacher @10"]

    # The same ratio on as many frames of the training episodes (evenly spaced), with fresh shared
    # noise: the students were fitted there; the gap to the held-out ratio is what does not generalise.
    idx_train = [round(i * (start - 1) / max(len(idx) - 1, 1)) for i in range(len(idx))]
    raw_train = observation_batch(ds, idx_train)
    z_train = [torch.randn(len(idx_train), cfg.chunk_size, cfg.max_action_dim, generator=g) for _ in range(a.noises)]
    train_outs: dict[tuple[str, int], list] = {}

    def on_train(model: str, k: int) -> list:
        if (model, k) not in train_outs:
            pol, pre, post = models[model]
            train_outs[model, k] = [chunk(pol, pre, post, raw_train, z.to(device), k).cpu() for z in z_train]
        return train_outs[model, k]

    rows = []
    for sname, model, k, nz in samplers:
        teacher_k = outs[f"teacher @{k}"] if f"teacher @{k}" in outs else None
        ratio = ratio_train = None
        if model != "teacher" and teacher_k is not None and k < 10:  # at 10 steps the reference is teacher@10 itself
            ratio = mse(outs[sname], ref) / mse(teacher_k, ref)
            ref_train = on_train("teacher", 10)
            ratio_train = mse(on_train(model, k), ref_train) / mse(on_train("teacher", k), ref_train)
        cat = torch.cat(outs[sname])
        row = {"name": sname, "model": model, "steps": k, "noise": nz, "mse_ratio": ratio,
               "mse_ratio_training_frames": ratio_train,
               "rmse_vs_teacher10": rmse(outs[sname][0], ref[0]) if sname != "teacher @10" else 0.0,
               **mode_metrics(cat, modes.repeat(1, a.noises, 1, 1), valid.repeat(a.noises, 1))}
        pol, pre, _ = models[model]
        inputs = policy_inputs(pol, pre(dict(raw)))
        with torch.no_grad():
            row.update(straightness(pol, inputs, draws[0][nz].to(device), k, adim))
        rows.append(row)
        print(f"  [{name}] {sname}: mse-ratio {fmt(ratio, 4)} rmse {row['rmse_vs_teacher10']:.4f} "
              f"hit {row['mode_hit_rate']:.2f} S_fine {row['S_fine']:.3f}", file=sys.stderr, flush=True)
    table = markdown(
        ["sampler", "Euler steps", "MSE ratio vs teacher@K", "same, training frames", "RMSE vs teacher@10",
         "nearest-mode dist", "mode-hit rate", "S (Euler grid)", "S (10-pt grid)"],
        [[r["name"], str(r["steps"]), fmt(r["mse_ratio"], 4), fmt(r["mse_ratio_training_frames"], 4),
          fmt(r["rmse_vs_teacher10"], 4), fmt(r["mode_distance"], 4),
          fmt(r["mode_hit_rate"], 2), fmt(r["S_euler"], 3), fmt(r["S_fine"], 3)] for r in rows],
    )
    settings = {"world": name, "cameras": list(spec.cameras), "state_dim": spec.state_dim, "action_dim": spec.action_dim,
                "chunk_size": cfg.chunk_size, "teacher": "given" if a.teacher else "trained here",
                "teacher_train_steps": None if a.teacher else a.teacher_train_steps,
                "teacher_lr": float(cfg.optimizer_lr), "frames": len(idx),
                "noise_draws": a.noises, "teacher_dtype": str(next(models["teacher"][0].model.vlm_with_expert.vlm.parameters()).dtype)}
    return {"settings": settings, "rows": rows, "table": table, "timings": timings,
            "chunks": {k: torch.cat(v) for k, v in outs.items()}, "modes": modes, "valid": valid.repeat(a.noises, 1)}


def main(argv=None) -> int:
    args = sys.argv[1:] if argv is None else argv
    given_teacher = any(x == "--teacher" or x.startswith("--teacher=") for x in args)
    hub_env(args, DEFAULT_WORKDIR, private_cache=not given_teacher)  # a given teacher: the caller's HF cache
    a = parse_args(argv)
    import torch  # noqa: F401

    a.workdir = a.workdir.resolve()
    device = setup_device(a.device, PROG)
    quiet_imports()
    t_start = time.perf_counter()
    results = {name: evaluate_world(a, name, device) for name in a.worlds}
    hw = hardware(device)
    summary_rows = []
    for name, res in results.items():
        by = {r["name"]: r for r in res["rows"]}
        t10 = by["teacher @10"]
        for r in res["rows"]:
            if r["model"] != "teacher" and r["steps"] < 10:
                summary_rows.append([name, r["name"], fmt(r["mse_ratio"], 4), fmt(r["mse_ratio_training_frames"], 4),
                                     fmt(r["mode_hit_rate"], 2),
                                     fmt(r["mode_hit_rate"] / t10["mode_hit_rate"], 2) if t10["mode_hit_rate"] else "n/a"])
    summary = markdown(["world", "student", "MSE ratio vs teacher@K (target <= 0.01)", "same, training frames", "mode-hit rate",
                        "hit / teacher@10's (target >= 0.9)"], summary_rows)
    scales = {f"{k}-step": v for k, v in a.lr_scales.items()}
    common = {"student_train_steps": a.student_train_steps, "student_batch_size": a.batch_size, "student_lr": a.lr,
              "student_lr_scale": scales, "train_seed": a.train_seed,
              "student_settings": "hub-reflow train defaults except the time sampling"
              + (f" and lr {a.lr:g}" if a.lr is not None else " (lr: the teacher config's)")
              + f", peak rate x{scales['1-step']:g} (1 step), x{scales['2-step']:g} (2 steps); the reference loop: the base rate",
              "default_time_sampling": a.default_mode, "modes": a.modes, "round2": a.round2, "holdout_episodes": HOLDOUT,
              "seed": a.seed, "hit_threshold": HIT, "fine_times": FINE_TIMES, "smoke": a.smoke}
    out = write_json(a.out, {"benchmark": "fidelity", "hardware": hw, "settings": common,
                             "worlds": {n: {k: v for k, v in r.items() if k in ("settings", "rows", "table", "timings")}
                                        for n, r in results.items()},
                             "summary": summary, "total_s": time.perf_counter() - t_start})
    if not a.no_png:
        for name, res in results.items():
            plot(res["chunks"], res["modes"], res["valid"], out.with_name(f"{out.stem}_{name}.png"), f"{name}: {hardware_line(hw)}")
    print(f"# Reflow fidelity on the multimodal tiny worlds ({'smoke' if a.smoke else 'full run'})")
    print(f"hardware: {hardware_line(hw)}; held-out episodes ({HOLDOUT}), {a.noises} shared noise draws per frame (seed {a.seed}); "
          f"students {a.student_train_steps} reflow steps at batch {a.batch_size}, default time sampling {a.default_mode}; "
          f"mode hit: distance < {HIT}; json: {out}")
    for name, res in results.items():
        print(f"\n## {name} ({res['settings']['frames']} frames)\n")
        print(res["table"])
    print("\n## summary\n")
    print(summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
