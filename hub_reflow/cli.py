"""hub-reflow: a thin command line over the library. User mistakes print one line.

Exit codes: 0 ok, 1 a check failed, 2 bad input, 130 interrupted."""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from pathlib import Path

from . import pairs as pairs_module
from . import train as train_module
from .canonicalize import canonicalize
from .closed_loop.command import add_eval, split_env_args
from .config import FRAME_SAMPLINGS, ONE_STEP_LR_SCALE, STUDENT_INPUTS, UPDATES, ReflowConfig
from .console import fail, run_command
from .demo import add_demo_args, start_demo
from .errors import UserError
from .flow import TIME_SAMPLERS
from .hub.push_pull import checkpoint_card, pull_checkpoint, push_checkpoint, push_pairs
from .logs import configured, quiet_environment
from .pairs import PAIRS_META_NAME, PairsArgs
from .safeio import dumps
from .train import TrainArgs
from .training.command import final_verdict, given_or_recorded, train_settings
from .training.run_folder import RunFolder
from .validation import MAX_SEED, MAX_TEACHER_STEPS, Parser, check_output_folder, float_in, int_in, ref_name, repo_id
from .verify import verify

POSITIVE, NON_NEGATIVE = int_in(1), int_in(0)


def _add_train(sub) -> None:
    p = sub.add_parser("train", help="train a reflow student from a SmolVLA teacher and its dataset")
    p.add_argument("--teacher", default=None, help="teacher: local pretrained_model/ folder or Hub repo id (required, except with --resume)")
    p.add_argument("--teacher-revision", default=None, help="branch, tag or commit of a Hub teacher (recorded as a commit sha)")
    p.add_argument("--dataset", default=None, help="LeRobotDataset repo id (required, except with --resume)")
    p.add_argument("--dataset-root", type=Path, default=None, help="local folder of the dataset (else the Hub)")
    p.add_argument("--dataset-revision", default=None, help="branch, tag or commit of a Hub dataset")
    p.add_argument("--output-dir", type=Path, required=True, help="new folder for the run (or the run to --resume)")
    p.add_argument("--steps", type=POSITIVE, default=ReflowConfig.steps, help="training steps")
    p.add_argument("--batch-size", type=POSITIVE, default=8, help="frames per step and process")
    p.add_argument("--student-steps", type=POSITIVE, default=1, help="Euler steps of the student (its num_steps), at most --teacher-steps")
    p.add_argument("--teacher-steps", type=int_in(1, MAX_TEACHER_STEPS, "more gives no better targets, only slower steps"),
                   default=10, help=f"Euler steps the teacher integrates per target (at most {MAX_TEACHER_STEPS})")
    p.add_argument("--time-sampling", choices=list(TIME_SAMPLERS), default=ReflowConfig.time_sampling, help="training times t: grid "
                   "(the student's Euler times), mixed (half grid, half uniform), uniform, or beta (SmolVLA's); see docs/fidelity.md")
    p.add_argument("--student-inputs", choices=list(STUDENT_INPUTS), default=ReflowConfig.student_inputs,
                   help="for a student of 2+ steps: train its later steps at the states its own Euler steps reach "
                   "(on-policy) or on straight paths; see docs/reflow.md")
    p.add_argument("--update", choices=list(UPDATES), default="fp32-masters",
                   help="how bf16 trainable weights are updated: fp32-masters (fp32 copies), bf16-sr (stochastic "
                   "rounding, no copies) or bf16 (round to nearest); recorded in the lineage")
    p.add_argument("--noises-per-frame", type=POSITIVE, default=None, metavar="M",
                   help=f"noise draws paired with each observation of a batch (batch-size x M rows per step; the VLM "
                   f"runs once per observation; default {ReflowConfig.noises_per_frame}, 1 with --pairs); see docs/reflow.md")
    p.add_argument("--frame-sampling", choices=list(FRAME_SAMPLINGS), default=None, help="which frames batches draw: "
                   "spread (mostly where the teacher's answer depends on the noise; default, uniform with --pairs) or uniform")
    p.add_argument("--lr", type=float_in(0), default=None, help="base learning rate (default: the teacher config's optimizer_lr)")
    p.add_argument("--lr-scale", type=float_in(0), default=None, metavar="X", help="peak learning rate: X times the base "
                   f"(default {ONE_STEP_LR_SCALE:g} for a 1-step student at the teacher's rate, else 1); see docs/fidelity.md")
    p.add_argument("--warmup-steps", type=NON_NEGATIVE, default=None, help="warm-up steps (default: 5%% of --steps)")
    p.add_argument("--holdout-episodes", type=NON_NEGATIVE, default=0, help="keep the last N episodes out of training")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="where to train")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=1000, help="seed of the data order, noise and times")
    p.add_argument("--save-freq", type=NON_NEGATIVE, default=0, help="checkpoint every N steps (0: only at the end)")
    p.add_argument("--log-freq", type=POSITIVE, default=50, help="print the mean loss every N steps")
    p.add_argument("--num-workers", type=NON_NEGATIVE, default=None,
                   help="data loader worker processes (default: on CUDA LeRobot's 4, at most the spare cores; 0 on the CPU)")
    p.add_argument("--resume", action="store_true", help="continue the run in --output-dir from checkpoints/last, with "
                   "the run's own recorded settings (an option given must equal the run's, except --save-freq, "
                   "--log-freq, --num-workers, --device, --no-progress, --no-cuda-graphs, --teacher-batch; a larger --steps extends it)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--pairs", default=None, help="train on cached teacher pairs (hub-reflow pairs): folder or Hub dataset repo id")
    p.add_argument("--pairs-revision", default=None, help="branch, tag or commit of a Hub pairs repo")
    p.add_argument("--no-cuda-graphs", action="store_true", help="sample the teacher eagerly (LeRobot's sample_actions), not through CUDA graphs")
    p.add_argument("--teacher-batch", type=NON_NEGATIVE, default=ReflowConfig.teacher_batch, metavar="ROWS", help="the "
                   "teacher answers consecutive steps' batches together, up to ROWS rows a call (same targets); see docs/reflow.md")
    _add_vlm_repo_id(p)
    p.set_defaults(func=_cmd_train)
    given_or_recorded(p)  # options not given stay out of the namespace: --resume fills them from the run's record


def _add_vlm_repo_id(p) -> None:
    p.add_argument("--vlm-repo-id", default=None, type=repo_id, metavar="ORG/NAME",
                   help="the Hub repo id of the teacher's backbone when its vlm_model_name is a local folder (checked "
                   "against the folder's files): written into the student's config and processors, so it can be pushed")


def _cmd_train(a) -> int:
    a = train_settings(a)
    try:
        rcfg = ReflowConfig(
            teacher_steps=a.teacher_steps, student_steps=a.student_steps, time_sampling=a.time_sampling,
            student_inputs=a.student_inputs, noises_per_frame=a.noises_per_frame, frame_sampling=a.frame_sampling,
            lr=a.lr, lr_scale=a.lr_scale, warmup_steps=a.warmup_steps, steps=a.steps, batch_size=a.batch_size, seed=a.seed,
            holdout_episodes=a.holdout_episodes, cuda_graphs=not a.no_cuda_graphs, update=a.update,
            teacher_batch=a.teacher_batch)
    except ValueError as e:
        flag = str(e).split(" ")[0].replace("_", "-")
        raise SystemExit(fail(f"--{flag}: {e}"))
    out = train_module.train(TrainArgs(
        teacher=a.teacher, teacher_revision=a.teacher_revision, dataset=a.dataset, dataset_root=a.dataset_root,
        dataset_revision=a.dataset_revision, output_dir=a.output_dir, reflow=rcfg, device=a.device,
        save_freq=a.save_freq, log_freq=a.log_freq, num_workers=a.num_workers, resume=a.resume,
        progress=not a.no_progress, pairs=a.pairs, pairs_revision=a.pairs_revision, record=a.record, vlm_repo_id=a.vlm_repo_id))
    if os.environ.get("RANK", "0") == "0":  # once, under torchrun / accelerate launch
        print(f"student checkpoint: {out}")
        print(final_verdict(out, a))
    return 0  # a finished run is not an error, whatever its verdict: the line says what to try


def _add_pairs(sub) -> None:
    p = sub.add_parser("pairs", help="run the teacher once over the dataset and cache its (noise, target) pairs")
    p.add_argument("--teacher", required=True, help="teacher checkpoint: local pretrained_model/ folder or Hub repo id")
    p.add_argument("--teacher-revision", default=None, help="branch, tag or commit of a Hub teacher")
    p.add_argument("--dataset", required=True, help="LeRobotDataset repo id")
    p.add_argument("--dataset-root", type=Path, default=None, help="local folder of the dataset (else the Hub)")
    p.add_argument("--dataset-revision", default=None, help="branch, tag or commit of a Hub dataset")
    p.add_argument("--output", type=Path, required=True, help="new folder for the pairs (a Hub dataset repo layout)")
    p.add_argument("--per-frame", type=POSITIVE, default=1, help="noise draws per training frame")
    p.add_argument("--teacher-steps", type=int_in(1, MAX_TEACHER_STEPS, "more gives no better targets, only slower steps"),
                   default=10, help=f"Euler steps the teacher integrates per target (at most {MAX_TEACHER_STEPS})")
    p.add_argument("--holdout-episodes", type=NON_NEGATIVE, default=0, help="leave the last N episodes out (as train will)")
    p.add_argument("--seed", type=int_in(0, MAX_SEED), default=1000, help="seed of the noise generator")
    p.add_argument("--batch-size", type=POSITIVE, default=32, help="frames per teacher batch")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="where to run the teacher")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="sample the teacher eagerly (LeRobot's sample_actions) instead of through CUDA graphs on CUDA")
    p.set_defaults(func=_cmd_pairs)


def _cmd_pairs(a) -> int:
    out = pairs_module.make_pairs(PairsArgs(
        teacher=a.teacher, teacher_revision=a.teacher_revision, dataset=a.dataset, dataset_root=a.dataset_root,
        dataset_revision=a.dataset_revision, output=a.output, per_frame=a.per_frame, teacher_steps=a.teacher_steps,
        holdout_episodes=a.holdout_episodes, seed=a.seed, batch_size=a.batch_size, device=a.device,
        progress=not a.no_progress, cuda_graphs=not a.no_cuda_graphs,
    ))
    print(f"teacher pairs: {out}")
    return 0


def _add_demo(sub) -> None:
    p = sub.add_parser("demo", help="the offline demo: tiny world -> teacher -> reflow student -> table -> verify -> local Hub")
    add_demo_args(p)
    p.set_defaults(func=_cmd_demo)


def _cmd_demo(a) -> int:
    # In a process of its own: HF_HOME (the demo's private cache) is read when huggingface_hub is imported.
    return start_demo(a.workdir, teacher_train_steps=a.teacher_train_steps, reflow_steps=a.reflow_steps, frames=a.frames,
                      verbose=a.verbose, episodes=a.episodes)


def _add_push(sub) -> None:
    p = sub.add_parser("push", help="push a reflow student checkpoint (or a teacher pairs folder) to the Hub in one commit")
    p.add_argument("checkpoint", type=Path, help="pretrained_model/ folder (or its checkpoints/<step>/ parent), or a "
                   "folder made by `hub-reflow pairs` (pushed as a dataset repo)")
    p.add_argument("--repo-id", required=True, type=repo_id, help="Hub repo id, namespace/name")
    p.add_argument("--private", action="store_true", help="create the repo private")
    p.add_argument("--branch", default=None, type=ref_name("branch"), help="push to this branch (created if missing)")
    p.add_argument("--tag", default=None, type=ref_name("tag"), help="tag the new commit (a new tag)")
    p.add_argument("--message", default=None, help="commit message")
    p.add_argument("--force", action="store_true", help="push even if the checkpoint fails the structural checks or is no reflow student (an "
                   "untrained copy, no lineage): its card then says so")
    p.add_argument("--teacher", default=None, help="run every structural check against this teacher (folder or Hub repo "
                   "id), as verify does; without it the checks that need a reference (key set, dtypes, VLM) are skipped")
    p.add_argument("--teacher-revision", default=None, help="branch, tag or commit of a Hub --teacher")
    p.set_defaults(func=_cmd_push)


def _cmd_push(a) -> int:
    if (a.checkpoint / PAIRS_META_NAME).is_file():  # a pairs folder: a dataset repo
        print(push_pairs(a.checkpoint, a.repo_id, private=a.private, branch=a.branch, commit_message=a.message, tag=a.tag))
        return 0

    print(push_checkpoint(a.checkpoint, a.repo_id, private=a.private, branch=a.branch, commit_message=a.message,
                          tag=a.tag, force=a.force, teacher=a.teacher, teacher_revision=a.teacher_revision,
                          warn=lambda msg: print(f"hub-reflow: warning: {msg}", file=sys.stderr)))
    return 0


def _add_pull(sub) -> None:
    p = sub.add_parser("pull", help="download a reflow student from the Hub and check it")
    p.add_argument("repo_id", help="Hub repo id, namespace/name")
    p.add_argument("--revision", default=None, help="branch, tag or commit sha (pinned to its commit)")
    p.add_argument("--local-dir", type=Path, default=None, help="download into this folder (new, empty, or an earlier pull "
                   "of the same repo; else the HF cache)")
    p.set_defaults(func=_cmd_pull)


def _cmd_pull(a) -> int:
    print(pull_checkpoint(a.repo_id, revision=a.revision, local_dir=a.local_dir))
    return 0


def _add_card(sub) -> None:
    p = sub.add_parser("card", help="print the model card that push would write for a checkpoint")
    p.add_argument("checkpoint", type=Path, help="a checkpoint's pretrained_model/ folder (without a lineage file: a "
                   "'lineage unknown' card)")
    p.add_argument("--repo-id", default=None, type=repo_id, help="the repo id the card should name (namespace/name)")
    p.set_defaults(func=_cmd_card)


def _cmd_card(a) -> int:
    print(str(checkpoint_card(a.checkpoint, repo_id=a.repo_id)))  # the images push would draw beside it
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
    p.add_argument("--teacher-revision", default=None, help="branch, tag or commit of a Hub teacher")
    p.add_argument("--json", action="store_true", help="print the verify report as JSON")
    p.add_argument("--dataset", default=None, help="LeRobotDataset repo id: also measure fidelity and speed against the teacher")
    p.add_argument("--dataset-root", type=Path, default=None, help="local folder of the dataset")
    p.add_argument("--frames", type=POSITIVE, default=32, help="held-out frames for the fidelity check")
    p.add_argument("--tolerance", type=float_in(0, 1), default=0.5,
                   help="fidelity passes when the student's action error is at most this times the teacher's own error "
                   "at the student's step count (and within the teacher's spread); see docs/fidelity.md")
    p.add_argument("--no-speed", action="store_true", help="skip the timing checks")


def _print_report(report, as_json: bool) -> int:
    if as_json:
        print(dumps(report.to_dict(), indent=2))  # strict JSON: a NaN measurement is null
    else:
        print(f"checkpoint: {report.checkpoint}")
        print(f"teacher:    {report.teacher or '(none: structure against the architecture of its config)'}")
        for line in report.lines():
            print(line)
        print(f"verdict: {report.verdict()}")
    return 0 if report.passed else 1


def _run_verify(a, checkpoint: str, revision: str | None):
    return verify(checkpoint, a.teacher, revision=revision, teacher_revision=a.teacher_revision, dataset=a.dataset,
                  dataset_root=a.dataset_root, frames=a.frames, tolerance=a.tolerance, speed=not a.no_speed,
                  compile_mode=a.compile_mode if getattr(a, "compile", False) else None)


def _quiet_stdout(as_json: bool):
    """With --json, stdout carries the JSON only: what libraries print while loading goes to stderr."""
    return contextlib.redirect_stdout(sys.stderr) if as_json else contextlib.nullcontext()


def _cmd_verify(a) -> int:
    try:
        with _quiet_stdout(a.json):
            report = _run_verify(a, a.checkpoint, a.revision)
    except UserError as e:
        if a.json:  # stdout stays JSON; the one error line still goes to stderr
            print(dumps({"error": str(e), "exit_code": e.exit_code}))
        raise
    return _print_report(report, a.json)


def _add_canonicalize(sub) -> None:
    p = sub.add_parser("canonicalize", help="repair a non-canonical SmolVLA reflow checkpoint into DST, then verify it")
    p.add_argument("src", help="the checkpoint to repair (folder or Hub repo id); never modified")
    p.add_argument("dst", type=Path, help="new folder for the canonical checkpoint")
    _add_verify_args(p, "the teacher (folder or Hub repo id): its dtype layout, load_vlm_weights and processor "
                     "files; without it the load_vlm_weights: true layout")
    _add_vlm_repo_id(p)
    p.set_defaults(func=_cmd_canonicalize)


def _cmd_canonicalize(a) -> int:
    check_output_folder(a.dst, "DST", hint="pass a new folder as DST (SRC is never overwritten)")

    with _quiet_stdout(a.json):
        changes = canonicalize(a.src, a.dst, a.teacher, revision=a.revision, teacher_revision=a.teacher_revision,
                               vlm_repo_id=a.vlm_repo_id)
        print(f"wrote {a.dst}")
        for change in changes:
            print(f"changed: {change}")
        report = _run_verify(a, str(a.dst), None)
    return _print_report(report, a.json)


def _interrupted(args) -> str:
    """What an interrupt (Ctrl-C) left behind, for the command that was running."""
    if getattr(args, "command", None) != "train":
        return "interrupted; nothing was written (a partial output is never left in place)"
    last = RunFolder(args.output_dir).last
    if last.exists():
        return f"interrupted; checkpoints/last ({last.resolve().name}) is intact: continue with --resume"
    return ("interrupted before the first checkpoint: nothing was saved, so there is nothing to resume; "
            "run the same command again to start over")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(prog="hub-reflow", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="show other libraries' warnings and progress bars")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    for add in (_add_train, _add_pairs, _add_demo, _add_push, _add_pull, _add_card, _add_verify, _add_canonicalize, add_eval):
        add(sub)
    for p in sub.choices.values():  # -v after the command too (`hub-reflow train ... -v`)
        p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                       help="show other libraries' warnings and progress bars")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv, env_args = split_env_args(sys.argv[1:] if argv is None else list(argv))  # LeRobot's --env.* (eval)
    parser = build_parser()
    args = parser.parse_args(argv)
    if env_args:
        if args.command != "eval":
            parser.error(f"unrecognized arguments: {' '.join(env_args)}")
        args.env_args = env_args
    if not args.verbose:
        quiet_environment()  # for child processes; libraries already imported are switched by `configured`
    with configured(args.verbose):
        return run_command(lambda: args.func(args), lambda: _interrupted(args))


if __name__ == "__main__":
    sys.exit(main())
