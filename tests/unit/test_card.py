"""The model card template ships inside the wheel, and MODEL_CARD.md's example matches it."""

import re
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _sections(text: str) -> list[str]:
    return re.findall(r"^## (.+)$", text, flags=re.M)


def test_template_is_in_the_wheel_and_renders_from_it(tmp_path):
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
                   check=True, capture_output=True)
    wheel = next(tmp_path.glob("hub_reflow-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "hub_reflow/templates/model_card.md" in names
    # Import hub_reflow from the wheel itself (zipimport), not from the source tree.
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]); import hub_reflow.hub.card as c; "
        "assert c.__file__.startswith(sys.argv[1]), c.__file__; print(c.template_text())"
    )
    r = subprocess.run([sys.executable, "-c", code, str(wheel)], capture_output=True, text=True, cwd=tmp_path, check=True)
    assert r.stdout.strip() == (ROOT / "templates" / "model_card.md").read_text().strip()


def test_model_card_md_example_matches_the_template_sections():
    doc = (ROOT / "MODEL_CARD.md").read_text()
    example = doc.split("<!-- example start -->", 1)[1].split("<!-- example end -->", 1)[0]
    template = (ROOT / "templates" / "model_card.md").read_text()
    assert _sections(example) == _sections(template)
    # A local teacher (the demo's): no base_model; that case is tested against the local Hub. The demo's
    # dataset is a local folder that does not name itself: no datasets metadata, no link.
    for field in ("library_name: lerobot", "pipeline_tag: robotics", "- reflow"):
        assert field in example
    assert "datasets:" not in example and "huggingface.co/datasets" not in example


def test_card_shows_human_values(tmp_path):
    """None settings spelled out from the teacher config's LeRobot presets, numbers rounded."""
    import json

    from synthetic import make_teacher

    from hub_reflow.hub.card import render_card
    from hub_reflow.checkpoint import CheckpointRef, Lineage, read_policy_config
    from hub_reflow.config import ReflowConfig

    reflow = {**ReflowConfig(lr=None, steps=400).to_dict(), "warmup_steps": None}
    lineage = Lineage(teacher=CheckpointRef(None, None, None, "0" * 64), reflow=reflow,
                      training={"step": 400, "final_loss": 0.06512918911874294, "device": "cpu"})
    teacher = make_teacher(tmp_path / "teacher")  # a SmolVLA config.json written by LeRobot
    card = str(render_card(lineage, read_policy_config(teacher), repo_id="you/student"))
    preset = json.loads((teacher / "config.json").read_text())
    base = preset["optimizer_lr"]  # a 1-step student's peak rate: 3 x the teacher's, spelled out
    assert f"| lr | 3 x LeRobot preset ({base:.4g}) = {3 * base:.4g} |" in card and "| lr_scale | 3 |" in card
    assert f"| weight_decay | LeRobot preset ({preset['optimizer_weight_decay']:.4g}) |" in card
    assert "| grad_clip_norm | LeRobot preset (10) |" in card
    assert "| warmup_steps | 5% of the run (20) |" in card
    assert "| freeze_vlm | yes |" in card and "| final_loss | 0.06513 |" in card
    assert "None" not in card.split("## Reflow settings", 1)[1]
    extended = Lineage(teacher=lineage.teacher, reflow=reflow, training={**lineage.training, "extensions": [
        {"from_step": 400, "steps_before": 400, "steps": 800, "schedule": "refitted to 800 steps"}]})
    card = str(render_card(extended, read_policy_config(teacher), repo_id="you/student"))
    assert "| extended at step 400 | --steps 400 -> 800: refitted to 800 steps |" in card
    two_step = Lineage(teacher=lineage.teacher, training=lineage.training,
                       reflow={**ReflowConfig(student_steps=2, steps=400).to_dict(), "warmup_steps": None})
    card = str(render_card(two_step, read_policy_config(teacher), repo_id="you/student"))
    assert f"| lr | LeRobot preset ({base:.4g}) |" in card and "| lr_scale | 1 |" in card


def test_chunk_plot_names_the_datasets_action_dims(tmp_path):
    """The teacher-vs-student panels are titled with the dataset's action names (recorded in the
    lineage's evaluation), LeRobot v2's {"motors": [...]} too; generic names when there are none
    or they do not fit."""
    from hub_reflow.checkpoint import CheckpointRef, Lineage
    from hub_reflow.hub.card_plots import CHUNKS, LOSS_CURVE, action_labels, draw_card_images

    names = ["shoulder", "elbow", "gripper"]
    generic = ["action dim 0", "action dim 1", "action dim 2"]
    assert action_labels({"motors": names}, 3) == names
    assert action_labels(names[:2], 3) == generic  # not one name per dim
    assert action_labels(["shoulder", "", "gripper"], 3) == generic

    chunks = {"teacher @10": [[0.0, 1.0, 2.0]] * 4, "student @1": [[0.1, 0.9, 2.1]] * 4}
    cases = [
        ({"loss_curve": [[10, 0.5], [20, 0.25]]}, {"example_chunks": chunks, "action_names": names, "frames_from": "held-out episodes"},
         {LOSS_CURVE: ["reflow training loss"], CHUNKS: ["a held-out frame, shared noise", *names]}),
        ({}, {"example_chunks": chunks}, {CHUNKS: ["one frame, shared noise", *generic]}),  # from before names were recorded
    ]
    for i, (training, evaluation, drawn) in enumerate(cases):
        lineage = Lineage(teacher=CheckpointRef(None, None, None, "0" * 64), reflow={}, training=training,
                          evaluation=evaluation)
        folder = tmp_path / str(i)
        folder.mkdir()
        assert draw_card_images(lineage, folder) == drawn
        assert sorted(p.name for p in folder.iterdir()) == sorted(drawn)


def test_card_gives_the_rtc_flags_of_the_checkpoints_step_count(tmp_path):
    """The "How to use" section's lerobot-rollout line carries the guidance for the checkpoint's num_steps
    (hub_reflow/rtc.py), and says why LeRobot's defaults do not fit where they do not."""
    from synthetic import make_teacher

    from hub_reflow.hub.card import render_card
    from hub_reflow.checkpoint import CheckpointRef, Lineage, read_policy_config
    from hub_reflow.config import ReflowConfig

    lineage = Lineage(teacher=CheckpointRef(None, None, None, "0" * 64), reflow=ReflowConfig(steps=400).to_dict(),
                      training={"step": 400})
    config = read_policy_config(make_teacher(tmp_path / "teacher"))  # 8-action chunks
    config.num_steps = 1
    card = str(render_card(lineage, config, repo_id="you/student"))
    assert ("lerobot-rollout --policy.path=you/student --robot.type=... --inference.type=rtc "
            "--inference.rtc.max_guidance_weight=1 --inference.rtc.execution_horizon=8\n") in card
    assert "max_guidance_weight 10 overshoots the committed actions at 1 Euler step (9x the error past them)" in card
    assert "a 2-step student of the same teacher" in card
    config.num_steps, config.chunk_size = 10, 50
    card = str(render_card(lineage, config, repo_id="you/student"))
    assert "lerobot-rollout --policy.path=you/student --robot.type=... --inference.type=rtc\n" in card
    assert "overshoots" not in card and "a 2-step student of the same teacher" not in card


def test_the_example_frame_is_named_as_it_was_measured(tmp_path):
    """No episode held out: the card's caption and the picture's title say a training frame, never
    "held-out frame" (the lineage's evaluation.frames_from is what the final measurement used)."""
    from synthetic import make_teacher

    from hub_reflow.hub.card import render_card
    from hub_reflow.checkpoint import CheckpointRef, Lineage, read_policy_config
    from hub_reflow.hub.card_plots import CHUNKS, draw_card_images

    chunks = {"teacher @10": [[0.0, 1.0]] * 4, "student @1": [[0.1, 0.9]] * 4}
    cfg = read_policy_config(make_teacher(tmp_path / "teacher"))
    for frames_from, frame in (("training episode 0 (no episode was held out)", "a training frame (no episode was held out)"),
                               ("held-out episodes", "a held-out frame")):
        lineage = Lineage(teacher=CheckpointRef(None, None, None, "0" * 64), reflow={"student_steps": 1},
                          training={"step": 5}, evaluation={
                              "example_chunks": chunks, "frames_from": frames_from, "frames": 16, "hardware": "CPU",
                              "rows": [{"name": "teacher @10", "steps": 10, "rmse": 0.0, "latency_ms": 10.0},
                                       {"name": "student @1", "steps": 1, "rmse": 0.01, "latency_ms": 2.0}],
                              "latency_ratio": 0.2})
        folder = tmp_path / frame.split()[1]
        folder.mkdir()
        assert draw_card_images(lineage, folder)[CHUNKS][0] == f"{frame}, shared noise"
        card = str(render_card(lineage, cfg, repo_id="you/student"))
        assert f"![teacher and student action chunks on {frame}](teacher_vs_student.png)" in card
        assert ("held-out" in card) == (frame == "a held-out frame")
