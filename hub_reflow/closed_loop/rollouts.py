"""Closed-loop evaluation (``hub-reflow eval``): several policies drive the same episodes through
LeRobot's own ``eval_policy`` / ``rollout``, each with its checkpoint's own processors
(``make_pre_post_processors``) and LeRobot's env processors; ``policy.config.num_steps`` selects
the step count.

Episodes are paired: episode ``i`` uses env seed ``seed + i`` and torch seed ``seed + i`` (LeRobot's
``set_seed``) for every policy, so outcomes compare episode by episode."""

from __future__ import annotations

import contextlib
import io
import logging
import os
import platform
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..checkpoint import LINEAGE_NAME, Lineage, load_smolvla, read_policy_config, resolve_checkpoint
from ..devices import resolve_device
from ..errors import UserError
from ..files import package_versions
from ..rtc import recommended
from .envs import EnvChoice, OpenedEnv, env_processors, open_env, policy_rename_map, require_success_key
from .plots import labelled_frames
from .results import EVAL_NAME, ClosedLoopResults
from .rtc_driver import INFERENCE_TYPES, RTCDriver, parse_inference, settings_of, with_settings
from .stats import chunk_jumps, summarize

MAX_EPISODES = 100_000
logger = logging.getLogger(__package__)


@dataclass
class EvalArgs:
    """What ``evaluate_closed_loop`` runs. ``student``/``teacher``: folder or Hub repo id (one of them
    at least; without ``teacher`` the student's lineage names its Hub teacher, when it has one)."""

    student: str | None = None
    teacher: str | None = None
    env: EnvChoice = field(default_factory=EnvChoice)
    episodes: int = 50
    seed: int = 0
    student_steps: tuple[int, ...] = ()  # default: the student's own num_steps
    teacher_steps: tuple[int, ...] = ()  # default: the teacher's own (10) and the student's
    n_action_steps: int | None = None  # actions executed per chunk before re-planning (default: each checkpoint's own)
    revision: str | None = None
    teacher_revision: str | None = None
    device: str = "auto"
    rename_map: dict = field(default_factory=dict)
    videos: int = 0  # episodes per policy rendered through LeRobot's eval_policy (VIDEOS_DIR/<row>/episode_<i>.mp4, labelled)
    videos_dir: Path | None = None
    command: str | None = None  # recorded for the card (no local paths)
    progress: bool = False  # LeRobot's progress bars (stderr) per episode
    # How chunks are executed (docs/deploy.md): "sync", one chunk after the other (LeRobot's eval and
    # sync backend); "rtc", LeRobot's real-time chunking with an inference latency of inference_delay
    # control steps (rtc_driver.RTCDriver), with LeRobot's RTC settings changed by inference_args
    # (``--inference.rtc.<field>=...``, ``--inference.queue_threshold=...``; LeRobot's defaults otherwise).
    inference: str = "sync"
    inference_delay: int = 3
    inference_args: tuple[str, ...] = ()
    # With "rtc": also run every row at the recommended settings for its step count (rtc.recommended)
    # where they differ from the given ones.
    rtc_recommended: bool = True


@dataclass
class _Loaded:
    role: str
    name: str  # Hub repo id or "a local checkpoint folder" (never a local path)
    weights_sha256: str
    path: Path
    config: object  # its SmolVLAConfig, read before the weights: the checks against the env come first
    policy: object = None


def _resolve(ref: str, revision: str | None, role: str) -> _Loaded:
    resolved = resolve_checkpoint(ref, revision, what=role)
    return _Loaded(role, resolved.ref.display_name, resolved.ref.weights_sha256, resolved.path,
                   read_policy_config(resolved.path, role))


def _teacher_ref(a: EvalArgs, student: _Loaded | None) -> tuple[str | None, str | None, str | None]:
    """The teacher to run (the given one, else the lineage's Hub teacher) and, when there is none,
    why and how to add the teacher rows."""
    if a.teacher or student is None:
        return a.teacher, a.teacher_revision, None
    lineage_file = student.path / LINEAGE_NAME
    why = None
    if not lineage_file.is_file():
        why = f"the checkpoint has no {LINEAGE_NAME}, so its teacher is unknown"
    else:
        ref = Lineage.from_file(lineage_file).teacher
        if ref.repo_id:
            return ref.repo_id, ref.commit, None
        why = "the student's teacher was a local folder (its path is not recorded)"
    return None, None, f"only the student row: {why}; pass --teacher TEACHER (its folder or Hub repo id) to add the teacher rows"


def _same_features(a: _Loaded, b: _Loaded) -> None:
    fa = {k: (f.type.value, tuple(f.shape)) for k, f in {**a.config.input_features, **a.config.output_features}.items()}
    fb = {k: (f.type.value, tuple(f.shape)) for k, f in {**b.config.input_features, **b.config.output_features}.items()}
    if fa != fb:
        diff = sorted(set(fa.items()) ^ set(fb.items()))[0][0]
        raise UserError(f"the student and the teacher have different features (first difference: {diff!r}); "
                        "pass the teacher the student was trained from")


def _check_n_action_steps(loaded: _Loaded, n: int | None) -> None:
    chunk = loaded.config.chunk_size
    if n is not None and not 1 <= n <= chunk:
        raise UserError(f"--n-action-steps {n}: the {loaded.role}'s chunks hold {chunk} actions (chunk_size); pass 1 to {chunk}")


def _step_list(steps: tuple[int, ...], default: list[int]) -> list[int]:
    out = []
    for s in steps or default:
        if s not in out:
            out.append(s)
    return out


def hardware(device: str) -> dict:
    info = {"device": device, "platform": platform.platform(), "processor": platform.machine(),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if device == "cuda":
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


class _Probe:
    """Stands in for the env preprocessor in LeRobot's rollout (it is called once per env step):
    counts the steps and keeps the state trajectory of planar worlds. Wraps the policy's chunk
    sampling to time it."""

    def __init__(self, env_pre, env_post, keep_states: bool):
        self.env_pre, self.env_post, self.keep_states = env_pre, env_post, keep_states
        self.steps, self.states, self.chunk_ms, self.actions, self.chunk_steps = 0, [], [], [], []

    def __call__(self, observation):
        self.steps += 1
        if self.keep_states:
            self.states.append([float(x) for x in observation["observation.state"][0]])
        return self.env_pre(observation)

    def post(self, transition):
        """Stands in for the env postprocessor: keeps the executed actions (the env's units)."""
        out = self.env_post(transition)
        self.actions.append(out["action"][0].detach().to("cpu", torch.float64).tolist())
        return out

    def timed(self, fn, sync: bool):
        def wrapper(*args, **kwargs):
            self.chunk_steps.append(self.steps - 1)  # the control step whose observation the chunk answers
            t = time.perf_counter()
            out = fn(*args, **kwargs)
            if sync:
                torch.cuda.synchronize()
            self.chunk_ms.append(1000 * (time.perf_counter() - t))
            return out
        return wrapper


def _run_policy(loaded: _Loaded, steps: int, env: OpenedEnv, a: EvalArgs, device: str, rename: dict, label: str,
                rtc=None) -> tuple[dict, list]:
    """One row: ``loaded`` at ``steps`` Euler steps over the paired episodes, one chunk after the other
    (``rtc`` None) or under LeRobot's real-time chunking with these settings (an ``RTCInferenceConfig``)."""
    from lerobot.policies.factory import make_pre_post_processors
    from lerobot.scripts.lerobot_eval import eval_policy
    from lerobot.utils.random_utils import set_seed

    policy = loaded.policy
    policy.config.num_steps = steps
    if a.n_action_steps:  # as lerobot-eval's --policy.n_action_steps: LeRobot's reset() sizes the action queue by it
        policy.config.n_action_steps = a.n_action_steps
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(loaded.path), preprocessor_overrides={
        "device_processor": {"device": device}, "rename_observations_processor": {"rename_map": rename}})
    env_pre, env_post = env_processors(env, policy.config)
    state = env.observation.get("observation.state")
    keep = state is not None and len(state) == 2 and state[1] == 2
    driver = RTCDriver(policy, rtc, a.inference_delay) if rtc is not None else None
    outcomes, rewards, lengths, chunk_ms, trajectory = [], [], [], [], []
    actions, boundaries, prefix_errors = [], [], []
    with driver.installed() if driver else contextlib.nullcontext():
        for i in range(a.episodes):
            probe = _Probe(env_pre, env_post, keep_states=keep and i == 0)
            policy._get_action_chunk = probe.timed(type(policy)._get_action_chunk.__get__(policy), device == "cuda")
            set_seed(a.seed + i)  # the same torch (and numpy) seed per episode for every policy
            raw = Path(a.videos_dir) / label / f".raw-episode_{i}" if a.videos_dir is not None and i < a.videos else None
            bars = contextlib.nullcontext() if a.progress else contextlib.redirect_stderr(io.StringIO())
            try:
                with torch.no_grad(), bars:
                    info = eval_policy(env.vec, policy, probe, probe.post, pre, post, n_episodes=1, start_seed=a.seed + i,
                                       max_episodes_rendered=1 if raw else 0, videos_dir=raw)
            finally:
                del policy._get_action_chunk
            require_success_key(env)  # (after the probe step and the first episode, at the latest)
            episode = info["per_episode"][0]
            outcomes.append(bool(episode["success"]))
            if raw is not None:
                _label_video(raw, raw.parent / f"episode_{i}.mp4",
                             [label, f"episode {i} (seed {a.seed + i}): {'success' if outcomes[-1] else 'failure'}"])
            rewards.append(float(episode["sum_reward"]))
            lengths.append(probe.steps)
            chunk_ms.extend(probe.chunk_ms)
            actions.append(probe.actions)
            boundaries.append(driver.boundaries if driver else probe.chunk_steps)
            prefix_errors.extend(c.prefix_error for c in (driver.chunks if driver else []) if c.prefix_error is not None)
            trajectory = trajectory or probe.states
    result = {"role": loaded.role, "checkpoint": loaded.name, "weights_sha256": loaded.weights_sha256, "num_steps": steps,
              "inference": {"type": "sync"} if rtc is None else {"type": "rtc", "inference_delay": a.inference_delay, **settings_of(rtc)},
              **summarize(outcomes, rewards, lengths, chunk_ms), **chunk_jumps(actions, boundaries, prefix_errors),
              "outcomes": outcomes, "rewards": rewards, "lengths": lengths}
    return result, trajectory


def _rows(a: EvalArgs, loaded: _Loaded, steps: list[int], given) -> list[tuple]:
    """(checkpoint, steps, RTC settings or None, label) of each row of one checkpoint."""
    if given is None:
        return [(loaded, k, None, f"{loaded.role}@{k}") for k in steps]
    out = []
    chunk = loaded.config.chunk_size
    for k in steps:
        settings = [given]
        best = {**settings_of(given), **recommended(k, chunk)}
        if a.rtc_recommended and best != settings_of(given):
            settings.append(with_settings(given, best))
        for rtc in settings:
            s = settings_of(rtc)
            if s["execution_horizon"] > chunk:
                raise UserError(f"--inference.rtc.execution_horizon {s['execution_horizon']} exceeds the {loaded.role}'s "
                                f"chunk ({chunk} actions), which LeRobot's RTC engine fails on; pass {chunk} or less")
            out.append((loaded, k, rtc, f"{loaded.role}@{k} rtc w{s['max_guidance_weight']:g} h{s['execution_horizon']}"))
    return out


def _given_rtc(a: EvalArgs):
    """LeRobot's RTC settings (``lerobot-rollout``'s defaults) with the given ``--inference.*`` options
    (None for sync)."""
    if a.inference not in INFERENCE_TYPES:
        raise UserError(f"--inference must be one of {', '.join(INFERENCE_TYPES)}, got {a.inference!r}")
    if a.inference == "sync":
        if a.inference_args:
            raise UserError(f"{a.inference_args[0].split('=')[0]} applies to --inference rtc only")
        return None
    return parse_inference(a.inference_args)


def _label_video(raw: Path, path: Path, lines: list[str]) -> None:
    """LeRobot's video of an episode (written by ``eval_policy`` into ``raw``), enlarged and labelled
    (``plots.labelled_frames``), written to ``path`` by LeRobot's ``write_video``; ``raw`` removed."""
    import av
    from lerobot.utils.io_utils import write_video

    src = next(iter(sorted(raw.glob("*.mp4"))), None)
    if src is not None:
        with av.open(str(src)) as container:
            stream = container.streams.video[0]
            fps = round(float(stream.average_rate or 10))
            frames = [frame.to_ndarray(format="rgb24") for frame in container.decode(stream)]
        if frames:
            write_video(path, labelled_frames(frames, lines), fps)
    shutil.rmtree(raw, ignore_errors=True)


def evaluate_closed_loop(args: EvalArgs | None = None, **kwargs) -> ClosedLoopResults:
    """Run the student and the teacher (at their step counts) on the same paired episodes.

    ``evaluate_closed_loop(student="run/checkpoints/last/pretrained_model", teacher=..., env=EnvChoice(env_id="gym_mine/Reach-v0"),
    episodes=50)`` or with an ``EvalArgs``. Returns ``ClosedLoopResults`` (``.success_rates``,
    ``.to_dict()``, ``.table()``)."""
    a = args or EvalArgs(**kwargs)
    if not 1 <= a.episodes <= MAX_EPISODES:
        raise UserError(f"--episodes must be between 1 and {MAX_EPISODES}, got {a.episodes}")
    if not a.student and not a.teacher:
        raise UserError("nothing to evaluate: pass a checkpoint (and --teacher)")
    if not a.env.env_id and not a.env.env_args:
        raise UserError("no environment: pass --env-id ID or --env.type TYPE (LeRobot's env options)")
    device = resolve_device(a.device)
    rtc = _given_rtc(a)
    env = open_env(a.env)  # first: a bad env is reported before minutes of loading
    try:
        student = _resolve(a.student, a.revision, "student") if a.student else None
        teacher_ref, teacher_rev, note = _teacher_ref(a, student)
        teacher = _resolve(teacher_ref, teacher_rev, "teacher") if teacher_ref else None
        if student and teacher:
            _same_features(student, teacher)
        for loaded in filter(None, (student, teacher)):
            _check_n_action_steps(loaded, a.n_action_steps)
        rename = policy_rename_map(env, (student or teacher).config, a.rename_map, what=(student or teacher).role)
        if note:
            logger.warning("eval: %s", note)
        for loaded in filter(None, (student, teacher)):  # the weights, once the env is known to feed them
            loaded.policy = load_smolvla(loaded.path, device=device, config=loaded.config, what=loaded.role)
        runs = []
        if student:
            runs += _rows(a, student, _step_list(a.student_steps, [student.config.num_steps]), rtc)
        if teacher:
            own = teacher.config.num_steps
            runs += _rows(a, teacher, _step_list(a.teacher_steps, [own] + ([student.config.num_steps] if student else [])), rtc)
        policies, trajectories = {}, {}
        for loaded, k, settings, label in runs:
            policies[label], trajectories[label] = _run_policy(loaded, k, env, a, device, rename, label, settings)
    finally:
        env.vec.close()
    settings = {"episodes": a.episodes, "seed": a.seed, "device": device, "rename_map": rename, "n_action_steps": a.n_action_steps,
                "inference": a.inference, "inference_delay": a.inference_delay if a.inference == "rtc" else None,
                "command": a.command, "paired": "episode i: env seed and torch seed = seed + i",
                **({"no_teacher": note} if note else {})}
    env_info = {"id": env.label, "kind": "env-id" if env.env_cfg is None else "env-type",
                "options": list(a.env.env_args), "max_steps": env.max_steps, "scene": env.scene}
    return ClosedLoopResults(env=env_info, settings=settings, seeds=[a.seed + i for i in range(a.episodes)],
                             policies=policies, versions=package_versions(), hardware=hardware(device),
                             trajectories={k: v for k, v in trajectories.items() if v})


def record(results: ClosedLoopResults, checkpoint: str) -> Path:
    """Write ``reflow_eval.json`` into the local student checkpoint folder (beside the lineage)."""
    folder = resolve_checkpoint(checkpoint, None, what="checkpoint").path
    if not Path(checkpoint).expanduser().exists():
        raise UserError("--record writes into a local checkpoint folder; pull the checkpoint with --local-dir first")
    results.write(folder / EVAL_NAME)
    return folder / EVAL_NAME
