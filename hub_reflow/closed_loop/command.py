"""``hub-reflow eval``: the closed-loop comparison's command line (``rollouts.py`` does the work).

LeRobot's env options (``--env.type pusht --env.task PushT-v0 --env.episode_length 100``) are
taken out of the command line before argparse sees it (``split_env_args``) and parsed by LeRobot's
own ``EnvConfig`` (draccus), as ``lerobot-eval`` takes them."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from ..errors import UserError
from ..validation import MAX_SEED, check_output_folder, int_in
from .envs import TINY_ENV, EnvChoice
from .plots import VIDEO_MIN_SIDE
from .rollouts import MAX_EPISODES, EvalArgs, evaluate_closed_loop, record
from .rtc_driver import INFERENCE_PREFIX, INFERENCE_TYPES

ENV_PREFIX = "--env."


def split_prefixed(argv: list[str], prefix: str) -> tuple[list[str], list[str]]:
    """(argv without LeRobot-style ``<prefix><field>`` options, those options as ``<prefix><field>=value``)."""
    rest, taken = [], []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg.startswith(prefix) and len(arg) > len(prefix):
            if "=" not in arg and i + 1 < len(argv) and not argv[i + 1].startswith("--"):
                arg, i = f"{arg}={argv[i + 1]}", i + 1
            taken.append(arg)
        else:
            rest.append(arg)
        i += 1
    return rest, taken


def split_env_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """(argv without LeRobot's ``--env.<field>`` and ``--inference.<field>`` options, those options)."""
    rest, env = split_prefixed(argv, ENV_PREFIX)
    rest, inference = split_prefixed(rest, INFERENCE_PREFIX)
    return rest, env + inference


def _steps(text: str) -> tuple[int, ...]:
    try:
        values = tuple(int(s) for s in text.split(","))
    except ValueError:
        values = ()
    if not values or any(v < 1 or v > 1000 for v in values):
        raise ValueError(f"expected comma-separated step counts between 1 and 1000, got {text!r}")
    return values


def _json_object(text: str) -> dict:
    try:
        value = json.loads(text)
    except json.JSONDecodeError as e:
        raise ValueError(f"not JSON ({e.msg})") from None
    if not isinstance(value, dict):
        raise ValueError("expected a JSON object")
    return value


_steps.__name__ = "step list"
_json_object.__name__ = "JSON object"


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="closed loop: the student and its teacher drive the same episodes of an environment")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="student checkpoint (folder or Hub repo id); any SmolVLA checkpoint evaluates as the 'student' row")
    p.add_argument("--revision", default=None, help="branch, tag or commit of a Hub checkpoint")
    p.add_argument("--teacher", default=None, help="teacher checkpoint (default: the lineage's Hub teacher, when it has one)")
    p.add_argument("--teacher-revision", default=None)
    p.add_argument("--env-id", default=None, help=f"gymnasium id following LeRobot's env conventions, e.g. gym_mine/Reach-v0 "
                   f"(its namespace package is imported first; module:id works too), or {TINY_ENV} (the closed-loop tiny world). "
                   "LeRobot's env types: --env.type pusht|aloha|libero|metaworld and their --env.<field> options")
    p.add_argument("--env-kwargs", type=_json_object, default={}, help="JSON object of extra gym.make arguments (--env-id)")
    p.add_argument("--max-steps", type=int_in(1), default=None, help="episode time limit (default: the env's registered one)")
    p.add_argument("--episodes", type=int_in(1, MAX_EPISODES), default=50, help="paired episodes per policy")
    p.add_argument("--seed", type=int_in(0, MAX_SEED - MAX_EPISODES), default=0, help="episode i uses env and torch seed SEED + i")
    p.add_argument("--student-steps", type=_steps, default=(), help="Euler step counts of the student (default: its own)")
    p.add_argument("--teacher-steps", type=_steps, default=(), help="Euler step counts of the teacher (default: its own and the student's)")
    p.add_argument("--n-action-steps", type=int_in(1), default=None, metavar="N", help="actions executed per chunk before the "
                   "policy looks again, for every row (default: each checkpoint's own n_action_steps, as lerobot-train wrote it)")
    p.add_argument("--inference", choices=INFERENCE_TYPES, default="sync",
                   help="how chunks are executed: sync, one after the other (lerobot-eval); rtc, LeRobot's real-time chunking "
                   "(lerobot-rollout --inference.type=rtc) with an inference latency of --inference-delay control steps; "
                   "LeRobot's --inference.rtc.<field> and --inference.queue_threshold options change its settings (docs/deploy.md)")
    p.add_argument("--inference-delay", type=int_in(0), default=3, metavar="D",
                   help="with --inference rtc: control steps one chunk takes to compute; the actions executed meanwhile are "
                   "the committed ones (default: 3)")
    p.add_argument("--no-rtc-recommended", dest="rtc_recommended", action="store_false",
                   help="with --inference rtc: do not add rows at the recommended RTC settings of each step count")
    p.add_argument("--device", choices=["cpu", "cuda", "auto"], default="auto", help="where the policies run")
    p.add_argument("--rename-map", type=_json_object, default={},
                   help="JSON object: env observation key -> policy feature (as lerobot-eval's --rename_map)")
    p.add_argument("--json", type=Path, default=None, help="write the results (settings, per-episode outcomes, seeds, versions, hardware) here")
    p.add_argument("--record", action="store_true", help="also write reflow_eval.json into the checkpoint folder (the card shows it)")
    p.add_argument("--videos", type=int_in(0), default=0, help="render the first N episodes of each policy (LeRobot's videos, "
                   f"enlarged to at least {VIDEO_MIN_SIDE} pixels a side and labelled with the row, episode and outcome: "
                   "VIDEOS_DIR/<row>/episode_<i>.mp4)")
    p.add_argument("--videos-dir", type=Path, default=Path("eval_videos"), help="where --videos go")
    p.set_defaults(func=cmd_eval, env_args=[])


def _command(a) -> str:
    """The command as the card shows it: local paths replaced by placeholders."""
    parts = ["hub-reflow", "eval"]
    if a.checkpoint:
        parts.append(a.checkpoint if not Path(a.checkpoint).expanduser().exists() else "STUDENT_FOLDER")
    if a.teacher:
        parts += ["--teacher", a.teacher if not Path(a.teacher).expanduser().exists() else "TEACHER_FOLDER"]
    if a.env_id:
        parts += ["--env-id", a.env_id]
    parts += a.env_args
    if a.inference != "sync":
        parts += ["--inference", a.inference, "--inference-delay", str(a.inference_delay), *a.inference_args]
    for flag, value in (("--episodes", a.episodes), ("--seed", a.seed), ("--max-steps", a.max_steps),
                        ("--n-action-steps", a.n_action_steps), ("--device", a.device)):
        if value is not None:
            parts += [flag, str(value)]
    for flag, value in (("--student-steps", a.student_steps), ("--teacher-steps", a.teacher_steps)):
        if value:
            parts += [flag, ",".join(map(str, value))]
    for flag, value in (("--env-kwargs", a.env_kwargs), ("--rename-map", a.rename_map)):
        if value:
            parts += [flag, json.dumps(value)]
    return shlex.join(parts)


def cmd_eval(a) -> int:
    a.inference_args = tuple(x for x in a.env_args if x.startswith(INFERENCE_PREFIX))
    a.env_args = [x for x in a.env_args if not x.startswith(INFERENCE_PREFIX)]
    if a.env_id and a.env_args:
        raise UserError("pass either --env-id or LeRobot's --env.type options, not both")
    if a.env_args and not any(x.startswith("--env.type=") for x in a.env_args):
        raise UserError("LeRobot's env options need --env.type (pusht, aloha, libero, metaworld, ...)")
    if a.record and (not a.checkpoint or not Path(a.checkpoint).expanduser().is_dir()):
        raise UserError("--record writes reflow_eval.json into the checkpoint folder: pass a local checkpoint folder")
    if a.json is not None:
        check_output_folder(a.json.parent if str(a.json.parent) else Path("."), "--json", may_hold_files=True)
    results = evaluate_closed_loop(EvalArgs(
        student=a.checkpoint, teacher=a.teacher, env=EnvChoice(a.env_id, tuple(a.env_args), a.env_kwargs, a.max_steps),
        episodes=a.episodes, seed=a.seed, student_steps=a.student_steps, teacher_steps=a.teacher_steps,
        n_action_steps=a.n_action_steps, revision=a.revision, teacher_revision=a.teacher_revision, device=a.device,
        rename_map=a.rename_map, inference=a.inference, inference_delay=a.inference_delay, inference_args=a.inference_args,
        rtc_recommended=a.rtc_recommended, videos=a.videos, videos_dir=a.videos_dir if a.videos else None, command=_command(a),
        progress=a.verbose))
    print(results.table())
    if results.handover_table():
        print(results.handover_table())
    if a.json is not None:
        results.write(a.json)
        print(f"wrote {a.json}")
    if a.record:
        print(f"recorded {record(results, a.checkpoint)}")
    return 0
