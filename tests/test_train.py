"""``hub-reflow train`` end to end on teachers written by the real lerobot-train: the student
checkpoint is canonical, plain LeRobot loads it, reflow learns, resume works, bad input is refused."""

import json
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import BF16_STUDENT_STEPS, run_cli, run_main
from hub_reflow.checkpoint import processor_files
from hub_reflow.checks.fidelity import observation_batch


def _header(path: Path) -> dict:
    with safe_open(str(path), "pt") as f:
        return {k: (tuple(f.get_slice(k).get_shape()), f.get_slice(k).get_dtype()) for k in f.keys()}


def _is_vlm_key(key: str) -> bool:
    return key.startswith("model.vlm_with_expert.vlm.")


def assert_canonical(student: Path, teacher: Path, student_steps: int = 1) -> None:
    # config.json: only num_steps differs.
    s_cfg, t_cfg = json.loads((student / "config.json").read_text()), json.loads((teacher / "config.json").read_text())
    assert s_cfg.keys() == t_cfg.keys()
    diff = {k for k in t_cfg if s_cfg[k] != t_cfg[k]}
    assert diff == ({"num_steps"} if student_steps != t_cfg["num_steps"] else set())
    assert s_cfg["num_steps"] == student_steps and s_cfg["type"] == "smolvla"
    assert s_cfg["load_vlm_weights"] == t_cfg["load_vlm_weights"]
    # model.safetensors: the teacher's exact key set, shapes and dtypes (so no teacher/extra keys).
    s_head, t_head = _header(student / "model.safetensors"), _header(teacher / "model.safetensors")
    assert s_head == t_head
    # Frozen VLM bit-identical; the trained expert did change.
    s_w, t_w = load_file(student / "model.safetensors"), load_file(teacher / "model.safetensors")
    vlm = [k for k in s_w if _is_vlm_key(k)]
    assert vlm and all(torch.equal(s_w[k], t_w[k]) for k in vlm)
    assert any(not torch.equal(s_w[k], t_w[k]) for k in s_w if ".lm_expert." in k)
    assert all(torch.isfinite(v.float()).all() for v in s_w.values())
    # Processor files byte-identical to the teacher's.
    names = processor_files(teacher)
    assert len(names) == 4
    for name in names:
        assert (student / name).read_bytes() == (teacher / name).read_bytes(), name
    # The exact file set: LeRobot's files and the lineage (the card images are drawn at push time).
    assert {p.name for p in student.iterdir()} == {"config.json", "model.safetensors", *names, "reflow_lineage.json"}
    # Nothing absolute-pathed of ours in what we add.
    lineage = (student / "reflow_lineage.json").read_text()
    assert str(Path.home()) not in lineage and "/tmp" not in lineage


def assert_plain_lerobot_loads(student: Path, world) -> None:
    # strict=True: LeRobot's own loader raises on any missing or unexpected key.
    policy = SmolVLAPolicy.from_pretrained(str(student), strict=True)
    pre, post = make_pre_post_processors(policy.config, pretrained_path=str(student))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    obs = pre(observation_batch(ds, [0, 1]))
    actions = post(policy.predict_action_chunk(obs))
    assert actions.shape == (2, policy.config.chunk_size, 2)
    assert torch.isfinite(actions).all()


def test_canonical_from_bf16_teacher(world, student_bf16):
    assert_canonical(student_bf16, world.teacher)
    assert_plain_lerobot_loads(student_bf16, world)
    lineage = json.loads((student_bf16 / "reflow_lineage.json").read_text())
    assert lineage["training"]["step"] == BF16_STUDENT_STEPS and lineage["reflow"]["teacher_steps"] == 10
    assert lineage["teacher"]["repo_id"] is None and len(lineage["teacher"]["weights_sha256"]) == 64
    assert lineage["dataset"]["holdout_episodes"] == [20, 24]
    # Online pairs through the fast path's code (no CUDA graph on the CPU); the setting is recorded.
    assert lineage["reflow"]["cuda_graphs"] is True
    assert lineage["reflow"]["noises_per_frame"] == 2  # the default, as resolved and recorded
    assert lineage["reflow"]["frame_sampling"] == "spread"  # the default: frames drawn by the teacher's spread
    prepass = lineage["training"]["frame_spread"]  # hundreds of steps of 32 rows: every frame scored
    assert prepass["stride"] == 1 and prepass["frames_scored"] == prepass["frames"] == 400 and prepass["draws"] == 4  # 20 episodes
    assert lineage["training"]["teacher_sampling"] == "eager (static-shape path, no CUDA graph)"
    # Measured at the end of training, on held-out frames, for the card.
    ev = lineage["evaluation"]
    assert ev["frames_from"] == "held-out episodes" and ev["frames"] == 16
    assert [r["name"] for r in ev["rows"]] == ["teacher @10", "teacher @10 (other noise)", "teacher @1", "student @1"]
    assert ev["student_rmse"] == ev["rows"][3]["rmse"] and 0 < ev["latency_ratio"] < 1
    assert len(ev["example_chunks"]["student @1"]) == 8
    assert ev["action_names"] == ["vx", "vy"]  # the dataset's, for the card's plots


def test_canonical_from_fp32_teacher(world, student_fp32):
    t_cfg = json.loads((world.teacher_fp32 / "config.json").read_text())
    assert t_cfg["load_vlm_weights"] is False
    assert_canonical(student_fp32, world.teacher_fp32)
    assert {dt for _, dt in _header(student_fp32 / "model.safetensors").values()} == {"F32"}
    assert_plain_lerobot_loads(student_fp32, world)


def test_resume_after_a_kill_ends_canonical(world, tmp_path):
    out = tmp_path / "run"
    exe = Path(sys.executable).with_name("hub-reflow")
    args = [str(exe), "train", "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id,
            "--dataset-root", str(world.dataset_root), "--output-dir", str(out), "--steps", "8",
            "--batch-size", "4", "--save-freq", "2", "--device", "cpu", "--lr", "1e-3"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    first = out / "checkpoints" / "000002" / "training_state" / "training_step.json"
    deadline = time.time() + 300
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    stopped_at = json.loads((out / "checkpoints" / "last" / "training_state" / "training_step.json").read_text())["step"]
    assert stopped_at < 8
    run_cli(*args[1:], "--resume")
    last = out / "checkpoints" / "last"
    assert last.resolve().name == "000008"
    assert json.loads((last / "training_state" / "training_step.json").read_text())["step"] == 8
    assert not list((out / "checkpoints").glob(".tmp-*"))
    assert_canonical(last / "pretrained_model", world.teacher_fp32)


def _bad(*args: str, fresh_process: bool = False) -> str:
    """The one error line of a refused command (exit 2, no traceback): through cli.main in this
    process, or with ``fresh_process`` as the installed command (what reaches a user's terminal)."""
    r = run_cli(*args, check=False) if fresh_process else run_main(*args)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("hub-reflow: error:")]
    assert len(lines) == 1, r.stderr[-2000:]
    return lines[0]


def test_bad_input_one_line_errors(world, tmp_path):
    common = ["--dataset", world.repo_id, "--dataset-root", str(world.dataset_root), "--steps", "1", "--device", "cpu"]
    msg = _bad("train", "--teacher", str(tmp_path / "nope"), "--output-dir", str(tmp_path / "o1"), *common,
               fresh_process=True)
    assert "does not exist" in msg
    msg = _bad("train", "--teacher", str(world.backbone), "--output-dir", str(tmp_path / "o2"), *common)
    assert "not 'smolvla'" in msg
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--output-dir", str(tmp_path / "o3"), *common,
               "--student-steps", "0")
    assert "--student-steps" in msg
    from hub_reflow.testing.tiny_world import make_tiny_dataset

    other = tmp_path / "other-ds"
    make_tiny_dataset(other, repo_id="local/other", num_episodes=2, episode_length=3, camera_key="observation.images.top")
    msg = _bad("train", "--teacher", str(world.teacher_fp32), "--output-dir", str(tmp_path / "o4"),
               "--dataset", "local/other", "--dataset-root", str(other), "--steps", "1", "--device", "cpu")
    assert "observation.images.cam" in msg


def test_resume_with_fp32_master_weights_is_bit_exact(world, tmp_path):
    """The bf16 teacher's student trains through fp32 masters; they are saved in training_state/ so
    a run resumed from step 4 (with a data loader worker this time) ends bit-identical to the
    uninterrupted one."""
    from conftest import train_student

    args = ("--batch-size", "4", "--save-freq", "4", "--holdout-episodes", "0")
    full = train_student(world, world.teacher, tmp_path / "full", 6, *args)
    state = tmp_path / "full" / "checkpoints" / "000004" / "training_state"
    assert (state / "fp32_master_weights.safetensors").is_file()
    assert (state / "hub_reflow_frame_spread.safetensors").is_file()  # what the resumed run draws frames by
    lineage = json.loads((full / "reflow_lineage.json").read_text())
    assert lineage["training"]["optimizer"]["fp32_master_weights"] is True
    part = tmp_path / "part"
    shutil.copytree(tmp_path / "full", part, symlinks=True)
    shutil.rmtree(part / "checkpoints" / "000006")
    (part / "checkpoints" / "last").unlink()
    (part / "checkpoints" / "last").symlink_to("000004")
    # The time of the run's first process, up to its checkpoint, as that checkpoint records it (made
    # large here, so that the resumed run's own seconds cannot account for it).
    stopped = part / "checkpoints" / "000004" / "pretrained_model" / "reflow_lineage.json"
    record = json.loads(stopped.read_text())
    earlier = {phase: 1000.0 * (i + 1) for i, phase in enumerate(record["training"]["time_s"])}
    record["training"]["time_s"] = earlier
    stopped.write_text(json.dumps(record))
    # The resumed run loads its data in a worker process (--num-workers may change on resume): the
    # same frames in the same order, so still bit-identical.
    resumed = train_student(world, world.teacher, part, 6, *args, "--resume", "--num-workers", "1")
    a, b = load_file(full / "model.safetensors"), load_file(resumed / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # training.time_s: the phases of both processes (the earlier one's plus the resumed one's own).
    training = json.loads((resumed / "reflow_lineage.json").read_text())["training"]
    own = {k: v - earlier.get(k, 0.0) for k, v in training["time_s"].items()}
    assert set(earlier) <= set(own) and all(0 <= s < 300 for s in own.values()), training["time_s"]
    assert own["setup"] > 0 and own["student"] > 0 and training["resumes"] == 1
    assert "resumes" not in lineage["training"]
