"""ReflowPolicy on real lerobot-train teachers: exact copy, frozen parts, and our sampler and loss
against LeRobot's ``sample_actions`` and ``VLAFlowMatching.forward``."""

import pytest
import torch
from lerobot.datasets.lerobot_dataset import LeRobotDataset
from lerobot.policies.factory import make_pre_post_processors

from hub_reflow import flow
from hub_reflow.config import ReflowConfig
from hub_reflow.policy import ReflowPolicy, vlm_module
from hub_reflow.smolvla import noise_shape, pad_to_data, policy_inputs, sample_chunk, velocity_field


@pytest.fixture(scope="module")
def reflow(world):
    return ReflowPolicy.from_teacher(world.teacher, ReflowConfig(student_steps=1))


@pytest.fixture(scope="module")
def batch(world, reflow):
    pre, _ = make_pre_post_processors(reflow.teacher.config, pretrained_path=str(world.teacher))
    ds = LeRobotDataset(world.repo_id, root=world.dataset_root)
    frames = [ds[i] for i in (0, 37, 101)]
    raw = {k: torch.stack([f[k] for f in frames]) for k in frames[0] if k.startswith("observation.")}
    raw["task"] = [f["task"] for f in frames]
    return pre(raw)


def test_student_is_bit_identical_copy_with_own_tensors(reflow):
    s, t = reflow.student.state_dict(), reflow.teacher.state_dict()
    assert s.keys() == t.keys()
    for k in s:
        assert s[k].dtype == t[k].dtype, k
        assert torch.equal(s[k], t[k]), k
        assert s[k].data_ptr() != t[k].data_ptr(), f"{k} is shared"
    # The bf16 layout of a load_vlm_weights=true teacher: VLM bf16, projections fp32.
    assert s["model.action_out_proj.weight"].dtype == torch.float32
    assert any(v.dtype == torch.bfloat16 for k, v in s.items() if ".vlm." in k)


def test_frozen_parts(reflow):
    assert all(not p.requires_grad for p in reflow.teacher.parameters())
    assert all(not p.requires_grad for p in vlm_module(reflow.student).parameters())
    trainable = {n for n, p in reflow.student.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith(("model.vlm_with_expert.lm_expert.", "model.action_", "model.state_proj")) for n in trainable)
    reflow.train()
    assert reflow.student.training and not reflow.teacher.training
    assert not vlm_module(reflow.student).training
    reflow.eval()


def test_our_euler_path_equals_lerobot_sample_actions(reflow, batch):
    inputs = policy_inputs(reflow.teacher, batch)
    torch.manual_seed(3)
    z = torch.randn(noise_shape(reflow.teacher, inputs.batch_size))
    for steps in (1, 10):
        theirs = sample_chunk(reflow.teacher, inputs, z, steps)
        with torch.no_grad():
            ours = flow.euler_sample(velocity_field(reflow.teacher, inputs), z, steps)
        torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-5)


def test_reflow_loss_equals_vlaflowmatching_forward(reflow, batch):
    """Our loss (flow.interpolate/target, velocity from the model) equals LeRobot's forward."""
    student = reflow.student
    inputs = policy_inputs(student, batch)
    torch.manual_seed(4)
    z = torch.randn(noise_shape(student, inputs.batch_size))
    t = torch.tensor([0.1, 0.5, 1.0])
    with torch.no_grad():
        a = pad_to_data(sample_chunk(reflow.teacher, inputs, z, 10), 2)
        captured = {}
        hook = student.model.action_out_proj.register_forward_hook(lambda m, i, o: captured.setdefault("v", o))
        theirs = student.model.forward(*inputs.args(), a, z, t)[..., :2].mean()
        hook.remove()
        ours = flow.reflow_loss(captured["v"], z, a, action_dim=2)
        # The velocity LeRobot trains is the one it samples with: v at x_t from our interpolation.
        v_direct = velocity_field(student, inputs)(flow.interpolate(z, a, t), t)
    torch.testing.assert_close(ours, theirs, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(v_direct, captured["v"], rtol=1e-3, atol=1e-3)


def test_forward_returns_finite_loss_and_grads_only_where_trainable(reflow, batch):
    reflow.train()
    loss, info = reflow(batch)
    loss.backward()
    reflow.eval()
    assert torch.isfinite(loss) and loss.item() > 0
    assert all(p.grad is None for p in reflow.teacher.parameters())
    assert all(p.grad is None for p in vlm_module(reflow.student).parameters())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in reflow.trainable_parameters())
    reflow.student.zero_grad(set_to_none=True)


def test_config_validation_names_the_field():
    with pytest.raises(ValueError, match="student_steps"):
        ReflowConfig(student_steps=0)
    with pytest.raises(ValueError, match="time_sampling"):
        ReflowConfig(time_sampling="normal")
