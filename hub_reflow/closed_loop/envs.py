"""Closed-loop environments for ``hub-reflow eval``, built the way LeRobot builds them.

Three ways in: LeRobot's registered env types (``--env.type pusht --env.task ...``: its
``EnvConfig`` classes, ``create_envs`` and env processors), any gymnasium id of an importable
package that follows LeRobot's env conventions (``--env-id gym_mine/Reach-v0``: the namespace is
imported first, as LeRobot does; gymnasium's ``module:id`` form works too), and the closed-loop tiny
world by name (``TINY_ENV``). Observations go through LeRobot's ``preprocess_observation``
(``pixels`` -> ``observation.image`` or ``observation.images.<camera>``, ``agent_pos`` ->
``observation.state``); ``policy_rename_map`` then maps what the env gives to the policy's features.
"""

from __future__ import annotations

import contextlib
import difflib
import importlib
import io
from dataclasses import dataclass, field, make_dataclass

import gymnasium as gym
import numpy as np

from ..errors import UserError

# The closed-loop tiny world (hub_reflow/testing/post_world.py), by name.
TINY_ENV = "tiny-go-around"
TINY_ENV_SPEC = "hub_reflow.testing.post_world:hub_reflow/GoAround-v0"
# What to install for LeRobot's env types (their packages are LeRobot's extras).
ENV_PACKAGES = {"pusht": "gym_pusht", "aloha": "gym_aloha", "libero": "libero", "metaworld": "metaworld"}


@dataclass
class EnvChoice:
    """Which environment: ``env_id`` (a gymnasium id, ``module:id``, or ``TINY_ENV``) or ``env_args``
    (``--env.type=...`` and ``--env.<field>=...`` options, as ``lerobot-eval`` takes them)."""

    env_id: str | None = None
    env_args: tuple[str, ...] = ()
    env_kwargs: dict = field(default_factory=dict)  # extra gym.make keyword arguments (--env-id)
    max_steps: int | None = None  # a time limit for an env registered without one (--env-id)

    def describe(self) -> str:
        return self.env_id if self.env_id else " ".join(self.env_args)


@dataclass
class OpenedEnv:
    vec: object  # a gymnasium VectorEnv of one env
    label: str  # the env id (gymnasium id, or LeRobot's type/task)
    env_cfg: object | None  # LeRobot's EnvConfig for --env.type, else None
    max_steps: int
    observation: dict  # key -> shape of one preprocessed observation (batch of 1)
    action_dim: int
    scene: dict | None = None  # what the env says to draw under trajectories (its ``plot_scene``)
    raw: str | None = None  # what the env gives when it is not LeRobot's observation dict (``observation`` is then empty)
    obs_fix: str | None = None  # the option that makes it give LeRobot's dict (an env with an ``obs_type``)


class SuccessSeen(gym.Wrapper):
    """Remembers whether the env ever put ``is_success`` in a step's info (LeRobot's eval reads the
    episode's outcome there; an env that never does would score 0 silently)."""

    seen_success_key = False

    def step(self, action):
        out = super().step(action)
        if "is_success" in out[-1]:
            self.seen_success_key = True
        return out


def require_success_key(env: OpenedEnv) -> None:
    """After an episode: refuse an env (``--env-id``) that never reported ``info["is_success"]``."""
    if env.env_cfg is not None:
        return  # LeRobot's own env types report it
    if not any(getattr(e, "seen_success_key", True) for e in getattr(env.vec, "envs", [])):
        raise UserError(f"{env.label}: the env does not report info['is_success'], which LeRobot's eval reads as the "
                        "episode's outcome; follow LeRobot's env conventions")


def parse_env_type(args: tuple[str, ...]):
    """LeRobot's ``EnvConfig`` for ``--env.type=... --env.<field>=...`` (parsed by draccus, as
    ``lerobot-eval`` parses them); a bad option is one line."""
    import draccus
    from lerobot.envs.configs import EnvConfig

    options = make_dataclass("EnvOptions", [("env", EnvConfig)])  # `--env.type=...` as lerobot-eval's config nests it
    stderr = io.StringIO()
    try:
        with contextlib.redirect_stderr(stderr):
            return draccus.parse(config_class=options, args=list(args)).env
    except SystemExit:
        lines = [ln for ln in stderr.getvalue().splitlines() if "error:" in ln]
        raise UserError(f"--env options: {lines[-1].split('error: ', 1)[1] if lines else ' '.join(args)}") from None
    except Exception as e:  # draccus' DecodingError and friends
        raise UserError(f"--env options: {e}") from None


def _import_for(env_id: str, what: str) -> str:
    """Import what ``env_id`` needs (``module:id``, else its namespace when not registered); the id."""
    module, _, name = env_id.rpartition(":") if ":" in env_id else ("", "", env_id)
    if not module and name not in gym.registry and "/" in name:
        module = name.split("/", 1)[0]
    if module:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            missing = e.name or module
            raise UserError(f"{what}: the Python package {missing!r} is not installed; install it "
                            f"(pip install {missing.split('.')[0].replace('_', '-')}) or the package that provides {name}") from None
        except Exception as e:  # the package itself is broken: one line, not its traceback
            raise UserError(f"{what}: importing {module} failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
    if name not in gym.registry:
        close = difflib.get_close_matches(name, list(gym.registry), n=1)
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise UserError(f"{what}: unknown gymnasium env {name!r}{hint}; importing {module or 'its package'} did not register it")
    return name


def _vector(make_one):
    try:
        from gymnasium.vector import AutoresetMode

        return gym.vector.SyncVectorEnv([make_one], autoreset_mode=AutoresetMode.SAME_STEP)
    except ImportError:
        return gym.vector.SyncVectorEnv([make_one])


def open_env(choice: EnvChoice) -> OpenedEnv:
    """Build one env (a vector env of one, as ``lerobot-eval`` with batch size 1) and probe it: one
    reset and one step with a zero action, to learn its observation keys (``require_success_key``
    then checks that it reports ``info["is_success"]``)."""
    if choice.env_id:
        env_id = TINY_ENV_SPEC if choice.env_id == TINY_ENV else choice.env_id
        name = _import_for(env_id, "--env-id")
        spec = gym.spec(name)
        limit = choice.max_steps or spec.max_episode_steps
        if not limit:
            raise UserError(f"--env-id: {name} is registered without a time limit; pass --max-steps N")
        kwargs = {"disable_env_checker": True, "max_episode_steps": limit, **choice.env_kwargs}

        def make_one():
            return SuccessSeen(gym.make(name, **kwargs))

        try:
            vec = _vector(make_one)
        except Exception as e:
            raise UserError(f"--env-id: gym.make({name!r}) failed: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}") from None
        label, env_cfg = name, None
    else:
        env_cfg = parse_env_type(choice.env_args)
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # LeRobot prints "attempting to import ..."
                envs = env_cfg.create_envs(n_envs=1, use_async_envs=False)
        except ModuleNotFoundError as e:
            package = ENV_PACKAGES.get(env_cfg.type, getattr(e, "name", None) or env_cfg.package_name)
            raise UserError(f"--env.type {env_cfg.type} needs the package {package!r}: pip install 'lerobot[{env_cfg.type}]'") from None
        except gym.error.Error as e:
            raise UserError(f"--env.type {env_cfg.type}: {e}") from None
        suite = next(iter(envs.values()))
        if len(envs) > 1 or len(suite) > 1:
            raise UserError(f"--env.type {env_cfg.type} made {sum(len(s) for s in envs.values())} tasks; evaluate one at a time "
                            "(e.g. --env.task_ids=[0] for a LIBERO suite)")
        vec = next(iter(suite.values()))
        label = f"{env_cfg.type}/{env_cfg.task}"
        limit = int(vec.call("_max_episode_steps")[0])
    return _probe(vec, label, env_cfg, limit)


def _probe(vec, label: str, env_cfg, limit: int) -> OpenedEnv:
    from lerobot.envs.utils import preprocess_observation

    obs, _ = vec.reset(seed=0)
    space = vec.single_action_space
    if not hasattr(space, "shape") or space.shape is None or len(space.shape) != 1:
        vec.close()
        raise UserError(f"{label}: its action space {space} is not a flat Box; LeRobot's policies act in Box spaces")
    zero = np.clip(np.zeros((1, *space.shape), dtype=space.dtype or np.float32), space.low, space.high)
    vec.step(zero)  # an env that reports info["is_success"] only at the end is told apart after an episode
    fix = _obs_type_fix(vec, env_cfg)
    if not isinstance(obs, dict):  # e.g. gym-pusht's default obs_type "state": one array; named with the policy's needs
        shape = list(np.shape(obs)[1:])
        what = f"one {'image' if len(shape) == 3 else 'array'} of shape {shape}"
        return OpenedEnv(vec, label, env_cfg, limit, {}, int(space.shape[0]), None, what, fix)
    try:
        processed = preprocess_observation(obs)
    except (AssertionError, TypeError) as e:
        vec.close()
        raise UserError(f"{label}: its observation is not in LeRobot's format (pixels / agent_pos): {e}") from None
    if env_cfg is not None:  # what the policy sees after LeRobot's env processor (LIBERO's builds the state)
        try:
            processed = env_cfg.get_env_processors()[0]({**processed, "task": [""]})
        except Exception:  # an env processor that needs more than a probe gives: the keys before it
            pass
    shapes = {k: tuple(v.shape) for k, v in processed.items() if hasattr(v, "shape")}
    try:
        scene = vec.get_attr("plot_scene")[0]
    except Exception:  # most envs have none
        scene = None
    return OpenedEnv(vec, label, env_cfg, limit, shapes, int(space.shape[0]), scene if isinstance(scene, dict) else None,
                     obs_fix=fix)


LEROBOT_OBS_TYPE = "pixels_agent_pos"  # the obs_type of LeRobot's env configs (pusht, aloha): camera images and state


def _obs_type_fix(vec, env_cfg) -> str | None:
    """For an env with an ``obs_type`` option set to something else: how to ask it for LeRobot's dict."""
    if env_cfg is not None:
        current, option = getattr(env_cfg, "obs_type", None), f"--env.obs_type={LEROBOT_OBS_TYPE}"
    else:
        try:
            current = getattr(vec.envs[0].unwrapped, "obs_type", None)
        except (AttributeError, IndexError):
            current = None
        option = f"--env-kwargs '{{\"obs_type\": \"{LEROBOT_OBS_TYPE}\"}}'"
    if not isinstance(current, str) or current == LEROBOT_OBS_TYPE:
        return None
    return f"pass {option} (its obs_type is {current!r})"


def _needs(policy_config) -> str:
    return " and ".join(f"{k} {list(f.shape)}" for k, f in policy_config.input_features.items())


def _is_image(shape: tuple) -> bool:
    return len(shape) == 4


def policy_rename_map(env: OpenedEnv, policy_config, user_map: dict | None = None, what: str = "policy") -> dict:
    """The rename map from the env's preprocessed keys to the policy's input features (LeRobot's
    ``rename_observations_processor``): the user's map first, then every policy feature the env does
    not give by name gets the one unused env key of its kind (a camera for a camera, the state for
    the state). Shapes are checked; a mismatch is one line naming both sides."""
    from lerobot.configs import FeatureType

    if env.raw is not None:
        fix = env.obs_fix or "make the env return LeRobot's observation dict (LeRobot's env conventions)"
        raise UserError(f"{env.label} gives its observation as {env.raw}, not LeRobot's dict of 'pixels' (camera images) "
                        f"and 'agent_pos' (state); the {what} needs {_needs(policy_config)}: {fix}")
    rename = dict(user_map or {})
    given = {rename.get(k, k): s for k, s in env.observation.items()}
    unknown = [k for k in rename if k not in env.observation]
    if unknown:
        raise UserError(f"--rename-map: {env.label} gives no {unknown[0]!r} (it gives {', '.join(sorted(env.observation))})")
    wanted = {k: f for k, f in policy_config.input_features.items()}
    missing = [k for k in wanted if k not in given]
    for key in missing:
        visual = wanted[key].type is FeatureType.VISUAL
        free = [k for k, s in given.items() if k not in wanted and _is_image(s) == visual and k.startswith("observation.")]
        same_name = [k for k in free if k.rsplit(".", 1)[-1] == key.rsplit(".", 1)[-1]]
        pick = same_name or (free if len(free) == 1 and len([m for m in missing if (wanted[m].type is FeatureType.VISUAL) == visual]) == 1 else [])
        if len(pick) != 1:
            also = f", or {env.obs_fix}" if env.obs_fix else ""
            raise UserError(f"{what} needs {key!r}, which {env.label} does not give (it gives {', '.join(sorted(given)) or 'nothing'}); "
                            "map one with --rename-map '{\"ENV_KEY\": \"" + key + "\"}'" + also)
        source = next(k for k, v in rename.items() if v == pick[0]) if pick[0] in rename.values() else pick[0]
        rename[source] = key
        given[key] = given.pop(pick[0])
    for key, feature in wanted.items():
        shape = given[key]
        if feature.type is FeatureType.VISUAL:
            if shape[1] != feature.shape[0]:
                raise UserError(f"{what}'s {key} has {feature.shape[0]} channels, {env.label}'s image {shape[1]}")
        elif tuple(shape[1:]) != tuple(feature.shape):
            raise UserError(f"{what}'s {key} has shape {list(feature.shape)}, {env.label} gives {list(shape[1:])}")
    action = policy_config.output_features.get("action")
    if action is not None and tuple(action.shape) != (env.action_dim,):
        raise UserError(f"{what} acts in {action.shape[0]} dimensions, {env.label} takes {env.action_dim}")
    return {k: v for k, v in rename.items() if k != v}


def env_processors(env: OpenedEnv, policy_config):
    """LeRobot's env processors (identity for a plain gymnasium id)."""
    from lerobot.envs.factory import make_env_pre_post_processors
    from lerobot.processor import PolicyProcessorPipeline

    if env.env_cfg is None:
        return PolicyProcessorPipeline(steps=[]), PolicyProcessorPipeline(steps=[])
    return make_env_pre_post_processors(env.env_cfg, policy_config)
