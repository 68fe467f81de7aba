"""``StochasticRoundingAdamW`` (training/optimizer.py): AdamW with stochastic rounding on bf16 weights. torch's AdamW arithmetic (bit for
bit on fp32 weights), an unbiased rounding that keeps sub-ulp steps where rounding to nearest loses
them, and a resume from the saved optimizer state that rounds as the uninterrupted run."""

from __future__ import annotations

import pytest
import torch

from hub_reflow.config import ReflowConfig
from hub_reflow.training.optimizer import StochasticRoundingAdamW, stochastic_round_bf16


def _grads(shape, n: int, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(*shape, generator=g) for _ in range(n)]


def test_fp32_weights_step_exactly_as_torch_adamw():
    w = torch.randn(40, 30, generator=torch.Generator().manual_seed(1))
    ours, theirs = torch.nn.Parameter(w.clone()), torch.nn.Parameter(w.clone())
    kw = {"lr": 3e-3, "betas": (0.9, 0.95), "eps": 1e-8, "weight_decay": 0.01}
    opt_ours, opt_theirs = StochasticRoundingAdamW([ours], **kw), torch.optim.AdamW([theirs], foreach=False, **kw)
    for g in _grads((40, 30), 6):
        ours.grad, theirs.grad = g.clone(), g.clone()
        opt_ours.step()
        opt_theirs.step()
    assert torch.equal(ours, theirs)
    assert opt_ours.state[ours]["exp_avg"].dtype == torch.float32  # moments in the weight's dtype, as torch's


def test_stochastic_rounding_is_unbiased_and_exact_on_bf16_values():
    g = torch.Generator().manual_seed(0)
    x = torch.full((200_000,), 1.0 + 1e-3)  # between the bf16 neighbours 1 and 1 + 2^-7
    r = stochastic_round_bf16(x, g)
    assert r.dtype == torch.bfloat16 and set(r.float().unique().tolist()) == {1.0, 1.0 + 2**-7}
    assert r.float().mean().item() == pytest.approx(1.001, abs=2e-5)
    assert stochastic_round_bf16(-x, g).float().mean().item() == pytest.approx(-1.001, abs=2e-5)
    exact = torch.randn(1000, generator=g).bfloat16().float()
    assert torch.equal(stochastic_round_bf16(exact, g).float(), exact)
    assert (x.bfloat16().float() == 1.0).all()  # rounding to nearest loses the step


def test_sub_ulp_steps_survive_in_bf16():
    """A constant gradient moves each weight by lr = 1e-3 a step (AdamW's normalised step), a
    quarter of a bf16 ulp at 1.0: rounded to nearest the weights never move; stochastically
    rounded they move by the sum of the steps, on average."""
    n, steps, lr = 4096, 100, 1e-3
    sr = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    rn = torch.nn.Parameter(torch.ones(n, dtype=torch.bfloat16))
    opt_sr = StochasticRoundingAdamW([sr], lr=lr, weight_decay=0.0)
    opt_rn = torch.optim.AdamW([rn], lr=lr, weight_decay=0.0)
    for _ in range(steps):
        sr.grad = torch.full((n,), -1.0, dtype=torch.bfloat16)
        rn.grad = sr.grad.clone()
        opt_sr.step()
        opt_rn.step()
    assert (rn.float() == 1.0).all()
    assert sr.float().mean().item() == pytest.approx(1.0 + steps * lr, rel=2e-3)


def test_a_resumed_run_rounds_as_the_uninterrupted_one():
    w = torch.randn(64, 16, generator=torch.Generator().manual_seed(2)).bfloat16()
    grads = _grads((64, 16), 6, seed=3)
    full = torch.nn.Parameter(w.clone())
    opt = StochasticRoundingAdamW([full], lr=1e-4, seed=5)
    for g in grads:
        full.grad = g.bfloat16()
        opt.step()
    part = torch.nn.Parameter(w.clone())
    opt = StochasticRoundingAdamW([part], lr=1e-4, seed=5)
    for g in grads[:3]:
        part.grad = g.bfloat16()
        opt.step()
    saved = opt.state_dict()
    resumed = torch.nn.Parameter(part.detach().clone())
    opt = StochasticRoundingAdamW([resumed], lr=1e-4, seed=5)
    opt.load_state_dict(saved)
    for g in grads[3:]:
        resumed.grad = g.bfloat16()
        opt.step()
    assert torch.equal(resumed, full) and not torch.equal(full, w)


def test_the_update_option_is_checked_and_recorded():
    assert ReflowConfig().update == "fp32-masters"
    assert ReflowConfig.from_dict({"teacher_steps": 10}).update == "fp32-masters"  # lineages from before the option
    assert ReflowConfig(update="bf16-sr").to_dict()["update"] == "bf16-sr"
    with pytest.raises(ValueError, match="update must be one of"):
        ReflowConfig(update="fp8")
