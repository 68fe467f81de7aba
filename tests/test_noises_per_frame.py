"""Many noises per observation (docs/reflow.md#many-noises-per-observation): with M noises per
frame the VLM prefix runs once per observation, for the teacher's sampling (its KV cache expanded
over the M noises) and for the student's loss (the prefix under autograd, its K/V expanded,
LeRobot's cached-prefix ``denoise_step`` on the M x B rows). Compared with LeRobot's own
``sample_actions`` / ``VLAFlowMatching.forward`` on the batch with each observation repeated M times."""

from __future__ import annotations

import copy
import json
from contextlib import contextmanager

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors

from hub_reflow import flow
from hub_reflow.checks.fidelity import observation_batch
from hub_reflow.checkpoint import load_smolvla
from hub_reflow.cli import main
from hub_reflow.config import ReflowConfig
from hub_reflow.fastpath import TeacherSampler, _Entry, HostConstants
from hub_reflow.policy import ReflowPolicy
from hub_reflow.smolvla import (
    PolicyInputs,
    noise_shape,
    on_policy_noise,
    policy_inputs,
    repeat_rows,
    sample_chunk,
    shared_prefix_losses,
    student_losses,
)

M = 3
FRAMES = (0, 37, 101, 150)


def _inputs(world, teacher_path, policy, device: str = "cpu") -> PolicyInputs:
    pre, _ = make_pre_post_processors(policy.config, pretrained_path=str(teacher_path),
                                      preprocessor_overrides={"device_processor": {"device": device}})
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    raw = observation_batch(ds, FRAMES)
    return policy_inputs(policy, pre(raw))


def _repeated(inputs: PolicyInputs, m: int) -> PolicyInputs:
    """Each observation m times in a row: what LeRobot's own calls get for m noises per frame."""
    return PolicyInputs(
        images=[repeat_rows(im, m) for im in inputs.images], img_masks=[repeat_rows(k, m) for k in inputs.img_masks],
        lang_tokens=repeat_rows(inputs.lang_tokens, m), lang_masks=repeat_rows(inputs.lang_masks, m),
        state=repeat_rows(inputs.state, m),
    )


@contextmanager
def _prefix_rows(policy):
    """The batch sizes the VLM's prefix passes ran on (calls of vlm_with_expert.forward with prefix
    embeddings)."""
    vwe, seen = policy.model.vlm_with_expert, []
    forward = vwe.forward

    def record(*, inputs_embeds, **kw):
        if inputs_embeds[0] is not None:
            seen.append(inputs_embeds[0].shape[0])
        return forward(inputs_embeds=inputs_embeds, **kw)

    vwe.forward = record
    try:
        yield seen
    finally:
        del vwe.forward


def _noise(policy, rows: int, seed: int) -> torch.Tensor:
    return torch.randn(noise_shape(policy, rows), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("which", ["teacher", "teacher_fp32"])
def test_shared_prefix_teacher_sample_is_sample_actions_on_the_repeated_batch_bit_for_bit(world, which):
    path = getattr(world, which)
    teacher = load_smolvla(path)
    teacher.eval()
    inputs = _inputs(world, path, teacher)
    b = inputs.batch_size
    rep = _repeated(inputs, M)
    for steps in (10, 2):
        z = _noise(teacher, b * M, steps)
        theirs = sample_chunk(teacher, rep, z, steps)  # as many observations as noises: LeRobot's sample_actions
        with _prefix_rows(teacher) as seen:
            ours = sample_chunk(teacher, inputs, z, steps)  # eager: LeRobot's embed_prefix, VLM once, expanded cache
            fast = TeacherSampler(teacher, steps)(inputs, z)  # the static-shape path (CUDA graphs on a GPU)
            eager = TeacherSampler(teacher, steps, cuda_graphs=False)(inputs, z)
        assert seen == [b, b, b]  # one prefix pass of B rows each, not M x B
        assert ours.shape == (b * M, 8, 8)
        # Same operations on the same values per row: bit-identical on the CPU.
        assert torch.equal(ours, theirs) and torch.equal(fast, theirs) and torch.equal(eager, theirs), steps
        # The M noises of one observation give M different chunks.
        assert not torch.equal(ours[0], ours[1])


def test_shared_prefix_body_makes_its_host_constants_in_the_warm_up(world):
    """What a CUDA-graph capture of the shared-prefix body relies on, on the meta device (a stand-in
    for CUDA; see test_fastpath): every ``torch.tensor(..., device=...)`` is made by the warm-up
    and the capture-mode run is answered from the store alone."""
    teacher = load_smolvla(world.teacher)
    inputs = _inputs(world, world.teacher, teacher)
    prefix = teacher.model.embed_prefix(*inputs.args())
    meta = copy.deepcopy(teacher).to("meta")
    z = _noise(teacher, inputs.batch_size * M, 0)
    on_meta = [torch.empty_like(t, device="meta") for t in (*prefix, inputs.state, z)]
    entry = _Entry.like(on_meta[:3], on_meta[3], on_meta[4])
    store: dict = {}
    with HostConstants(store, capturing=False):
        out = TeacherSampler(meta, 10)._body(entry)
    assert out.shape == (inputs.batch_size * M, 8, 8) and out.device.type == "meta"
    made = len(store)
    with HostConstants(store, capturing=True):
        TeacherSampler(meta, 10)._body(entry)
    assert len(store) == made


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a CUDA device")
def test_cuda_graphs_and_student_gradients_with_m_noises_per_frame(world):
    """On a CUDA device: the captured shared-prefix teacher sample agrees with LeRobot's eager
    ``sample_actions`` on the repeated batch within bf16 tolerance (one graph per noise count), and
    the shared-prefix student loss and gradients (fp32 teacher) with ``forward``'s within 1e-4."""
    teacher = load_smolvla(world.teacher, device="cuda")
    teacher.eval()
    inputs = _inputs(world, world.teacher, teacher, "cuda")
    b = inputs.batch_size
    sampler = TeacherSampler(teacher, 10)
    for m in (M, 1, M):
        z = _noise(teacher, b * m, m).cuda()
        torch.testing.assert_close(sampler(inputs, z), sample_chunk(teacher, _repeated(inputs, m), z, 10), rtol=2e-2, atol=2e-2)
    assert sampler.stats["captures"] == 2 and sampler.stats["graph_replays"] == 3, sampler.stats
    rp = ReflowPolicy.from_teacher(world.teacher_fp32, ReflowConfig(student_steps=2, noises_per_frame=M), device="cuda")
    rp.train()
    student = rp.student
    inputs = _inputs(world, world.teacher_fp32, student, "cuda")
    rows = inputs.batch_size * M
    z, a = _noise(student, rows, 0).cuda(), _noise(student, rows, 1).cuda()
    t = flow.sample_time("grid", rows, generator=torch.Generator().manual_seed(2), grid_steps=2).cuda()
    loss, grads = _grads(student, lambda: shared_prefix_losses(student, inputs, a, z, t, 2).mean())
    rep = _repeated(inputs, M)
    ref_loss, ref_grads = _grads(student, lambda: student_losses(student, rep, a, on_policy_noise(student, rep, z, a, t, 2), t).mean())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-4, atol=0)
    for name, g in grads.items():
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-4, atol=1e-4 * float(ref_grads[name].abs().max()), msg=name)


def _grads(policy, loss_fn):
    params = [p for p in policy.parameters() if p.requires_grad]
    for p in params:
        p.grad = None
    loss = loss_fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in policy.named_parameters() if p.requires_grad}


@pytest.mark.parametrize("k", [1, 2])
def test_shared_prefix_student_loss_and_gradients_equal_lerobots_forward_on_the_repeated_batch(world, k):
    """fp32 teacher (float32 throughout): the loss and the gradient of every trainable parameter
    (expert, projections, the state projection inside the prefix) agree within float32 rounding;
    K = 2 with the on-policy inputs computed on the shared prefix."""
    rp = ReflowPolicy.from_teacher(world.teacher_fp32, ReflowConfig(student_steps=k, noises_per_frame=M))
    rp.train()
    student = rp.student
    inputs = _inputs(world, world.teacher_fp32, student)
    rows = inputs.batch_size * M
    z, a = _noise(student, rows, 0), _noise(student, rows, 1)
    t = flow.sample_time("grid" if k > 1 else "uniform", rows, generator=torch.Generator().manual_seed(2), grid_steps=k)
    assert k == 1 or (0 < (t < 1).sum() < rows)  # on-policy rows and t = 1 rows both present
    rep = _repeated(inputs, M)
    with _prefix_rows(student) as seen:
        loss, grads = _grads(student, lambda: shared_prefix_losses(student, inputs, a, z, t, k).mean())
    assert seen == [inputs.batch_size]  # one prefix pass, on B rows: the on-policy rollout reuses it
    ref_loss, ref_grads = _grads(student, lambda: student_losses(
        student, rep, a, on_policy_noise(student, rep, z, a, t, k) if k > 1 else z, t).mean())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
    assert grads.keys() == ref_grads.keys() and "model.state_proj.weight" in grads
    for name, g in grads.items():
        scale = float(ref_grads[name].abs().max())
        assert scale > 0, name  # every trainable parameter gets a gradient, the state projection too
        torch.testing.assert_close(g, ref_grads[name], rtol=1e-5, atol=1e-5 * scale, msg=name)
    # And ReflowPolicy.forward takes that path for M > 1 (the teacher's targets given here).
    with torch.no_grad():
        via_forward = rp(None, noise=z, time=t, target=a, inputs=inputs)[0]
        direct = shared_prefix_losses(student, inputs, a, z, t, k).mean()
    assert torch.equal(via_forward, direct)


def test_bf16_vlm_student_gradients_within_bf16_rounding(world):
    """The bf16-VLM teacher: the state projection's gradient is summed over the M copies in bf16
    K/V (the repeat's backward) instead of per row, so it agrees within bf16 rounding only."""
    rp = ReflowPolicy.from_teacher(world.teacher, ReflowConfig(noises_per_frame=M))
    rp.train()
    student = rp.student
    inputs = _inputs(world, world.teacher, student)
    rows = inputs.batch_size * M
    z, a, t = _noise(student, rows, 3), _noise(student, rows, 4), torch.ones(rows)
    loss, grads = _grads(student, lambda: shared_prefix_losses(student, inputs, a, z, t).mean())
    ref_loss, ref_grads = _grads(student, lambda: student_losses(student, _repeated(inputs, M), a, z, t).mean())
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=0)
    for name, g in grads.items():
        scale = float(ref_grads[name].abs().max())
        torch.testing.assert_close(g, ref_grads[name], rtol=2e-2, atol=2e-2 * scale, msg=name)


def test_policy_draws_m_noises_per_frame_and_checks_the_rows(world):
    rp = ReflowPolicy.from_teacher(world.teacher_fp32, ReflowConfig(noises_per_frame=M))
    inputs = _inputs(world, world.teacher_fp32, rp.student)
    b = inputs.batch_size
    torch.manual_seed(0)
    noise, target = rp.make_pairs(inputs)
    assert noise.shape == target.shape == (b * M, 8, 8)
    assert torch.equal(target[..., 2:], torch.zeros_like(target[..., 2:]))  # padded like LeRobot's data
    expected = sample_chunk(rp.teacher, _repeated(inputs, M), noise, 10)
    assert torch.equal(target[..., :2], expected[..., :2])
    with pytest.raises(ValueError, match="4 noise rows for 4 observations; noises_per_frame is 3"):
        rp(None, noise=noise[:b], target=target[:b], inputs=inputs)
    with pytest.raises(ValueError, match="noises_per_frame must be >= 1"):
        ReflowConfig(noises_per_frame=0)
    assert ReflowConfig.from_dict({"student_steps": 2}).noises_per_frame == 1  # runs recorded before it


def test_train_with_noises_per_frame_records_it(world, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--teacher", str(world.teacher_fp32), "--dataset", world.repo_id, "--dataset-root",
            str(world.dataset_root), "--output-dir", str(out), "--steps", "2", "--batch-size", "4",
            "--noises-per-frame", "3", "--student-steps", "2", "--device", "cpu", "--log-freq", "1", "--no-progress",
                 "--num-workers", "0"]) == 0
    final = out / "checkpoints" / "last" / "pretrained_model"
    lineage = json.loads((final / "reflow_lineage.json").read_text())
    assert lineage["reflow"]["noises_per_frame"] == 3 and lineage["reflow"]["student_inputs"] == "on-policy"
    student = ReflowPolicy.from_pretrained(final)
    assert student.reflow_config.noises_per_frame == 3
    assert "noises_per_frame" in str(student.generate_model_card())


def test_train_cost_compares_a_shared_step_with_m_separate_steps():
    """benchmarks/train_cost.py's reflow_shared row against M online steps of the same batch:
    ratios of time, CPU time, FLOPs and operator counts (below 1: the shared step is cheaper)."""
    import subprocess
    import sys
    from pathlib import Path

    bench = Path(__file__).resolve().parents[1] / "benchmarks"
    sys.path.insert(0, str(bench))
    try:
        import train_cost
    finally:
        sys.path.remove(str(bench))

    def row(name, m, ms, cpu, flops, ops, fwd, bwd):
        return {"name": name, "batch_size": 2, "noises_per_frame": m, "median_step_ms": ms, "median_cpu_ms": cpu,
                "flops_per_step": flops, "aten_ops_per_step": ops,
                "flops_by_phase": {"preprocess": 0, "forward": fwd, "backward": bwd, "optimizer": 0}}

    rows = [row("reflow_online", 1, 100.0, 80.0, 1000, 500, 600, 400), row("reflow_shared", 4, 200.0, 160.0, 2000, 600, 1200, 800)]
    (c,) = train_cost.shared_vs_separate(rows)
    assert (c["median_step_ms_ratio"], c["median_cpu_ms_ratio"], c["flops_per_step_ratio"], c["aten_ops_per_step_ratio"]) == (
        0.5, 0.5, 0.5, 0.3)
    assert c["flops_ratio_by_phase"] == {"preprocess": None, "forward": 0.5, "backward": 0.5, "optimizer": None}
    assert train_cost.shared_markdown(rows).splitlines()[-1] == "| 2 | 4 | 0.50 | 0.50 | 0.50 | 0.30 | 0.50 | 0.50 |"
    r = subprocess.run([sys.executable, str(bench / "train_cost.py"), "--noises-per-frame", "0"], capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and "train_cost.py: error: --noises-per-frame must be >= 1" in r.stderr, r.stderr[-2000:]
