"""verify's fidelity rule (docs/fidelity.md) on every teacher the suite uses: trained students pass;
structurally perfect but useless students (an untrained copy, an expert re-initialised by LeRobot,
small random or all-zero expert weights) fail. The card and canonicalize give the same verdict."""

from __future__ import annotations

import json

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors
from lerobot.policies.smolvla.modeling_smolvla import SmolVLAPolicy

from breaks import USELESS
from conftest import HOLDOUT
from hub_reflow.hub.card import render_card
from hub_reflow.checkpoint import Lineage, read_policy_config
from hub_reflow.checks.fidelity import FLOOR, MAX_RATIO, chunk, fidelity_verdict, observation_batch
from hub_reflow.verify import FAIL, PASS, fidelity_checks

TEACHERS = ("bf16", "fp32")


@pytest.fixture(scope="module")
def pairs(world, student_bf16, student_fp32):
    """teacher name -> (teacher folder, trained student folder)."""
    return {"bf16": (world.teacher, student_bf16), "fp32": (world.teacher_fp32, student_fp32)}


def _fidelity(world, student, teacher):
    checks = fidelity_checks(student, teacher, world.repo_id, world.dataset_root, speed=False)
    return next(c for c in checks if c.name == "fidelity")


@pytest.mark.parametrize("which", TEACHERS)
def test_trained_student_passes(which, world, pairs):
    teacher, student = pairs[which]
    fid = _fidelity(world, student, teacher)
    assert fid.status == PASS, fid.summary
    assert fid.details["ratio"] <= MAX_RATIO


@pytest.mark.parametrize("which", TEACHERS)
@pytest.mark.parametrize("useless", sorted(USELESS))
def test_useless_student_fails(useless, which, world, pairs, tmp_path):
    teacher, student = pairs[which]
    broken = USELESS[useless](student, teacher, tmp_path / useless)
    fid = _fidelity(world, broken, teacher)
    assert fid.status == FAIL, fid.summary
    # Not a borderline call: the error is at least the teacher's own at the student's step count.
    d = fid.details
    assert d["student_rmse"] >= 0.99 * d["teacher_rmse_at_student_steps"], d
    assert d["teacher_rmse_at_student_steps"] > FLOOR * d["action_scale"], d  # the floor does not apply


def test_the_rule_on_known_numbers():
    # Clearly better than the teacher at K steps: pass; no better (the untrained copy): fail.
    assert fidelity_verdict(0.2, 0.5, 0.9, 1.0).passed
    assert not fidelity_verdict(0.5, 0.5, 0.9, 1.0).passed
    assert not fidelity_verdict(0.26, 0.5, 0.9, 1.0).passed  # x0.52 > 0.5
    # Within 0.5 x teacher@K but further than the teacher's own spread: fail.
    assert not fidelity_verdict(0.3, 1.0, 0.25, 1.0).passed
    # A teacher already straight at K steps (error under the floor): a student that close passes.
    assert fidelity_verdict(0.015, 0.015, 0.9, 1.0).passed and not fidelity_verdict(0.025, 0.015, 0.9, 1.0).passed
    # Non-finite actions never pass.
    assert not fidelity_verdict(float("nan"), 0.5, 0.9, 1.0).passed


def test_reflow_learns_the_multimodal_task(world, student_bf16):
    """On held-out frames with fresh shared noise (4 draws per frame): the 1-step student's squared
    error against the 10-step teacher is at most a tenth of the 1-step teacher's (an untrained copy
    scores exactly 1, a damaged expert above 1), and it picks the teacher's mode."""
    loaded = {}
    for name, path in (("teacher", world.teacher), ("student", student_bf16)):
        policy = SmolVLAPolicy.from_pretrained(str(path))
        loaded[name] = (policy, *make_pre_post_processors(policy.config, pretrained_path=str(path)))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    start = int(ds.meta.episodes["dataset_from_index"][ds.meta.total_episodes - HOLDOUT])
    raw = observation_batch(ds, list(range(start, len(ds))))
    cfg = loaded["teacher"][0].config
    g = torch.Generator().manual_seed(2026)  # not a seed training used
    se_student = se_teacher1 = 0.0
    same_side = []
    for _ in range(4):
        z = torch.randn(len(raw["task"]), cfg.chunk_size, cfg.max_action_dim, generator=g)
        ref = chunk(*loaded["teacher"], raw, z, 10)
        s1, t1 = chunk(*loaded["student"], raw, z, 1), chunk(*loaded["teacher"], raw, z, 1)
        se_student += float(((s1 - ref) ** 2).mean())
        se_teacher1 += float(((t1 - ref) ** 2).mean())
        same_side.append((torch.sign(s1[..., 0].mean(1)) == torch.sign(ref[..., 0].mean(1))).float().mean())
    ratio = se_student / se_teacher1
    print(f"MSE ratio student@1 / teacher@1 vs teacher@10: {ratio:.4f}")
    assert ratio <= 0.1, ratio
    assert float(torch.stack(same_side).mean()) >= 0.95


def test_card_gives_verifys_verdict(world, student_bf16, tmp_path):
    lineage = Lineage.from_file(student_bf16 / "reflow_lineage.json")
    cfg = read_policy_config(student_bf16)
    assert "**PASS**" in render_card(lineage, cfg).content
    # The same record with the numbers of an untrained copy (student error = teacher's at 1 step).
    lineage.evaluation["student_rmse"] = lineage.evaluation["teacher_rmse_at_student_steps"]
    card = render_card(lineage, cfg).content
    assert "**FAIL**" in card and "not clearly better" in card
    assert json.loads(json.dumps(lineage.evaluation))["verdict"]["passed"] is True  # as recorded at training


def test_latency_rows_are_timed_in_alternating_rounds(world):
    """The card's latency column: every row called in turn, round after round (one warm-up round),
    each figure the row's fastest call; ten Euler steps cost more than one on the same policy."""
    from hub_reflow.checks.fidelity import _latencies_ms

    policy = SmolVLAPolicy.from_pretrained(world.teacher)
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(world.teacher))
    calls = []
    predict = policy.predict_action_chunk

    def recorded(batch, noise=None):
        calls.append(policy.config.num_steps)
        return predict(batch, noise=noise)

    policy.predict_action_chunk = recorded
    raw = observation_batch(LeRobotDataset(world.repo_id, root=world.dataset_root), [0])
    z = torch.randn(1, policy.config.chunk_size, policy.config.max_action_dim)
    ten, one = _latencies_ms([(policy, pre, z, 10), (policy, pre, z, 1)], raw, repeats=4)
    assert calls == [10, 1] * 5 and policy.config.num_steps == 10  # restored after each call
    assert 0 < one < ten < float("inf")
    assert _latencies_ms([(policy, pre, z, 1)], raw, repeats=0) == [pytest.approx(float("nan"), nan_ok=True)]
