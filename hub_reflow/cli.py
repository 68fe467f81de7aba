"""``hub-reflow``: a thin command line over the library. User mistakes print one line, exit 2."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reflow student from a SmolVLA teacher and its dataset")
    p.add_argument("--teacher", required=True, help="teacher checkpoint: local pretrained_model/ folder or Hub repo id")
    p.add_argument("--teacher-revision", default=None, help="branch, tag or commit of a Hub teacher (recorded as a commit sha)")
    p.add_argument("--dataset", required=True, help="LeRobotDataset repo id")
    p.add_argument("--dataset-root", type=Path, default=None, help="local folder of the dataset (else the Hub)")
    p.add_argument("--dataset-revision", default=None)
    p.add_argument("--output-dir", type=Path, required=True)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--student-steps", type=int, default=1, help="Euler steps of the student (its num_steps)")
    p.add_argument("--teacher-steps", type=int, default=10, help="Euler steps the teacher integrates per target")
    p.add_argument("--time-sampling", choices=["uniform", "beta"], default="uniform")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--warmup-steps", type=int, default=None)
    p.add_argument("--holdout-episodes", type=int, default=0, help="keep the last N episodes out of training")
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--seed", type=int, default=1000)
    p.add_argument("--save-freq", type=int, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--log-freq", type=int, default=50)
    p.add_argument("--num-workers", type=int, default=0)
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from checkpoints/last")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--pairs", default=None, help="train on cached teacher pairs (hub-reflow pairs): folder or Hub dataset repo id")
    p.add_argument("--pairs-revision", default=None, help="branch, tag or commit of a Hub pairs repo")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="sample the teacher eagerly (LeRobot's sample_actions) instead of through CUDA graphs on CUDA")
    p.set_defaults(func=_cmd_train)


def _cmd_train(a) -> int:
    from .config import ReflowConfig
    from .train import TrainArgs, train

    try:
        rcfg = ReflowConfig(
            teacher_steps=a.teacher_steps, student_steps=a.student_steps, time_sampling=a.time_sampling,
            lr=a.lr, warmup_steps=a.warmup_steps, steps=a.steps, batch_size=a.batch_size, seed=a.seed,
            holdout_episodes=a.holdout_episodes, cuda_graphs=not a.no_cuda_graphs,
        )
    except ValueError as e:
        flag = str(e).split(" ")[0].replace("_", "-")
        raise SystemExit(_fail(f"--{flag}: {e}"))
    out = train(TrainArgs(
        teacher=a.teacher, teacher_revision=a.teacher_revision, dataset=a.dataset, dataset_root=a.dataset_root,
        dataset_revision=a.dataset_revision, output_dir=a.output_dir, reflow=rcfg, device=a.device,
        save_freq=a.save_freq, log_freq=a.log_freq, num_workers=a.num_workers, resume=a.resume,
        progress=not a.no_progress, pairs=a.pairs, pairs_revision=a.pairs_revision,
    ))
    if os.environ.get("RANK", "0") == "0":  # once, under torchrun / accelerate launch
        print(f"student checkpoint: {out}")
    return 0


def _add_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="run the teacher once over the dataset and cache its (noise, target) pairs")
    p.add_argument("--teacher", required=True, help="teacher checkpoint: local pretrained_model/ folder or Hub repo id")
    p.add_argument("--teacher-revision", default=None)
    p.add_argument("--dataset", required=True, help="LeRobotDataset repo id")
    p.add_argument("--dataset-root", type=Path, default=None, help="local folder of the dataset (else the Hub)")
    p.add_argument("--dataset-revision", default=None)
    p.add_argument("--output", type=Path, required=True, help="new folder for the pairs (a Hub dataset repo layout)")
    p.add_argument("--per-frame", type=int, default=1, help="noise draws per training frame")
    p.add_argument("--teacher-steps", type=int, default=10, help="Euler steps the teacher integrates per target")
    p.add_argument("--holdout-episodes", type=int, default=0, help="leave the last N episodes out (as train will)")
    p.add_argument("--seed", type=int, default=1000, help="seed of the noise generator")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--device", default="auto", help="cpu, cuda or auto")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="sample the teacher eagerly (LeRobot's sample_actions) instead of through CUDA graphs on CUDA")
    p.set_defaults(func=_cmd_pairs)


def _cmd_pairs(a) -> int:
    from .pairs import PairsArgs, make_pairs

    out = make_pairs(PairsArgs(
        teacher=a.teacher, teacher_revision=a.teacher_revision, dataset=a.dataset, dataset_root=a.dataset_root,
        dataset_revision=a.dataset_revision, output=a.output, per_frame=a.per_frame, teacher_steps=a.teacher_steps,
        holdout_episodes=a.holdout_episodes, seed=a.seed, batch_size=a.batch_size, device=a.device,
        progress=not a.no_progress, cuda_graphs=not a.no_cuda_graphs,
    ))
    print(f"teacher pairs: {out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the offline demo: tiny world -> teacher -> reflow student -> table")
    p.add_argument("--workdir", type=Path, default=Path("outputs/demo"))
    p.add_argument("--teacher-train-steps", type=int, default=1000)
    p.add_argument("--reflow-steps", type=int, default=400)
    p.add_argument("--frames", type=int, default=32, help="held-out frames in the table")
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a) -> int:
    from .demo import run_demo

    run_demo(a.workdir, teacher_train_steps=a.teacher_train_steps, reflow_steps=a.reflow_steps, frames=a.frames)
    return 0


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="push a reflow student checkpoint (or a teacher pairs folder) to the Hub in one commit")
    p.add_argument("checkpoint", type=Path, help="pretrained_model/ folder (or its checkpoints/<step>/ parent), or a "
                   "folder made by `hub-reflow pairs` (pushed as a dataset repo)")
    p.add_argument("--repo-id", required=True, help="Hub repo id, namespace/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--branch", default=None, help="push to this branch (created if missing)")
    p.add_argument("--tag", default=None, help="tag the new commit")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--force", action="store_true", help="push even if the checkpoint fails the structural checks")
    p.set_defaults(func=_cmd_push)


def _cmd_push(a) -> int:
    from .hub import push_checkpoint
    from .pairs import PAIRS_META_NAME

    if (a.checkpoint / PAIRS_META_NAME).is_file():  # a pairs folder: a dataset repo
        from .hub import push_pairs

        print(push_pairs(a.checkpoint, a.repo_id, private=a.private, branch=a.branch, commit_message=a.message, tag=a.tag))
        return 0

    print(push_checkpoint(a.checkpoint, a.repo_id, private=a.private, branch=a.branch, commit_message=a.message,
                          tag=a.tag, force=a.force))
    return 0


def _add_pull(sub) -> None:
    p = sub.add_parser("pull", help="download a reflow student from the Hub and check it")
    p.add_argument("repo_id", help="Hub repo id, namespace/name")
    p.add_argument("--revision", default=None, help="branch, tag or commit sha (pinned to its commit)")
    p.add_argument("--local-dir", type=Path, default=None, help="download into this folder (else the HF cache)")
    p.set_defaults(func=_cmd_pull)


def _cmd_pull(a) -> int:
    from .hub import pull_checkpoint

    print(pull_checkpoint(a.repo_id, revision=a.revision, local_dir=a.local_dir))
    return 0


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="print the model card that push would write for a checkpoint")
    p.add_argument("checkpoint", type=Path, help="a reflow student's pretrained_model/ folder")
    p.add_argument("--repo-id", default=None, help="the repo id the card should name")
    p.set_defaults(func=_cmd_card)


def _cmd_card(a) -> int:
    from .card import render_card
    from .checkpoint import LINEAGE_NAME, Lineage, read_policy_config
    from .errors import UserError

    if not (a.checkpoint / LINEAGE_NAME).is_file():
        raise UserError(f"{a.checkpoint} has no {LINEAGE_NAME}; pass a reflow student's pretrained_model/ folder")
    images = tuple(p.name for p in a.checkpoint.glob("*.png"))
    card = render_card(Lineage.from_file(a.checkpoint / LINEAGE_NAME), read_policy_config(a.checkpoint, "checkpoint"),
                       repo_id=a.repo_id, image_names=images)
    print(str(card))
    return 0


def _add_verify(sub) -> None:
    p = sub.add_parser("verify", help="check that a reflow checkpoint is canonical and acts like its teacher")
    p.add_argument("checkpoint", help="student checkpoint: local pretrained_model/ folder or Hub repo id")
    _add_verify_args(p, "teacher checkpoint (folder or Hub repo id); default: the lineage's Hub teacher, else the "
                     "structure is checked against what LeRobot builds from the checkpoint's config")
    p.add_argument("--compile", action="store_true",
                   help="also time student and teacher through LeRobot's compile_model path (torch.compile) on CUDA "
                   "when visible: compile time, steady-state chunk latency, speed-up (minutes per checkpoint)")
    p.add_argument("--compile-mode", default="reduce-overhead",
                   choices=["default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"],
                   help="SmolVLAConfig.compile_mode for --compile (default reduce-overhead: CUDA graphs)")
    p.set_defaults(func=_cmd_verify)


def _add_verify_args(p, teacher_help: str) -> None:
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hub checkpoint")
    p.add_argument("--teacher", default=None, help=teacher_help)
    p.add_argument("--teacher-revision", default=None)
    p.add_argument("--json", action="store_true", help="print the verify report as JSON")
    p.add_argument("--dataset", default=None, help="LeRobotDataset repo id: also measure fidelity and speed against the teacher")
    p.add_argument("--dataset-root", type=Path, default=None, help="local folder of the dataset")
    p.add_argument("--frames", type=int, default=32, help="held-out frames for the fidelity check")
    p.add_argument("--tolerance", type=float, default=1.1,
                   help="fidelity passes when the student's error is at most this times the smaller of the teacher's "
                   "own spread and the teacher's error at the student's step count")
    p.add_argument("--no-speed", action="store_true", help="skip the timing checks")


def _print_report(report, as_json: bool) -> int:
    import json

    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print(f"checkpoint: {report.checkpoint}")
        print(f"teacher:    {report.teacher or '(none: structure against the architecture of its config)'}")
        for line in report.lines():
            print(line)
        failed = sorted(report.failed_names())
        print("verdict: " + ("PASS" if report.passed else f"FAIL ({', '.join(failed)})"))
    return 0 if report.passed else 1


def _run_verify(a, checkpoint: str, revision: str | None):
    from .errors import UserError
    from .verify import verify

    if a.frames < 1:
        raise UserError("--frames must be at least 1")
    return verify(checkpoint, a.teacher, revision=revision, teacher_revision=a.teacher_revision, dataset=a.dataset,
                  dataset_root=a.dataset_root, frames=a.frames, tolerance=a.tolerance, speed=not a.no_speed,
                  compile_mode=a.compile_mode if getattr(a, "compile", False) else None)


def _quiet_stdout(as_json: bool):
    """With --json, stdout carries the JSON only: what libraries print while loading goes to stderr."""
    import contextlib

    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _cmd_verify(a) -> int:
    with _quiet_stdout(a.json):
        report = _run_verify(a, a.checkpoint, a.revision)
    return _print_report(report, a.json)


def _add_canonicalize(sub) -> None:
    p = sub.add_parser("canonicalize", help="repair a non-canonical SmolVLA reflow checkpoint into DST, then verify it")
    p.add_argument("src", help="the checkpoint to repair (folder or Hub repo id); never modified")
    p.add_argument("dst", type=Path, help="new folder for the canonical checkpoint")
    _add_verify_args(p, "the teacher (folder or Hub repo id): its dtype layout, load_vlm_weights and processor "
                     "files; without it the load_vlm_weights: true layout")
    p.set_defaults(func=_cmd_canonicalize)


def _cmd_canonicalize(a) -> int:
    from .canonicalize import canonicalize

    with _quiet_stdout(a.json):
        changes = canonicalize(a.src, a.dst, a.teacher, revision=a.revision, teacher_revision=a.teacher_revision)
        print(f"wrote {a.dst}")
        for change in changes:
            print(f"changed: {change}")
        report = _run_verify(a, str(a.dst), None)
    return _print_report(report, a.json)


def _fail(msg: str) -> int:
    print(f"hub-reflow: error: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hub-reflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    _add_train(sub)
    _add_pairs(sub)
    _add_demo(sub)
    _add_push(sub)
    _add_pull(sub)
    _add_card(sub)
    _add_verify(sub)
    _add_canonicalize(sub)
    args = parser.parse_args(argv)
    # LeRobot warns at import, with a long traceback, when FFmpeg is missing: we read no videos.
    logging.getLogger("lerobot.utils.import_utils").setLevel(logging.ERROR)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "huggingface_hub", "datasets", "accelerate", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    from .errors import UserError

    try:
        return args.func(args)
    except UserError as e:
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted; the last complete checkpoint is intact, continue with --resume")


if __name__ == "__main__":
    sys.exit(main())
