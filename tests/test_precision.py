"""fp32 master weights (hub_reflow/training/optimizer.py): small AdamW steps that bf16 weights round away
accumulate in the masters; the masters round-trip through their saved state."""

import torch

from hub_reflow.training.optimizer import MasterWeights


def _steps(p: torch.nn.Parameter, n: int, master: bool) -> torch.Tensor:
    mw = MasterWeights([p]) if master else None
    opt = torch.optim.AdamW(mw.params if mw else [p], lr=1e-4, weight_decay=0)
    for _ in range(n):
        p.grad = torch.ones_like(p)  # d(loss)/dp = 1: Adam steps by ~lr each time
        if mw:
            mw.grads_to_masters()
        opt.step()
        if mw:
            mw.masters_to_params()
        opt.zero_grad(set_to_none=True)
    return p.detach()


def test_bf16_updates_below_half_an_ulp_are_lost_without_masters_and_kept_with_them():
    # At 1.0 a bf16 ulp is 2^-7; a step of 1e-4 rounds back to 1.0 every time.
    plain = _steps(torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16)), 100, master=False)
    assert torch.equal(plain, torch.ones(4, dtype=torch.bfloat16))
    mastered = _steps(torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16)), 100, master=True)
    assert mastered.dtype == torch.bfloat16
    # 100 steps of ~1e-4 = ~0.01: the nearest bf16 values below 1.0 are 1 - k * 2^-8.
    assert torch.all(mastered < 1.0) and torch.allclose(mastered.float(), torch.full((4,), 0.99), atol=2**-8)


def test_fp32_params_are_stepped_as_they_are():
    p = torch.nn.Parameter(torch.ones(3))
    mw = MasterWeights([p])
    assert mw.params[0] is p and not mw.active


def test_masters_round_trip_through_their_state():
    p = torch.nn.Parameter(torch.randn(5).to(torch.bfloat16))
    q = torch.nn.Parameter(torch.randn(2))
    mw = MasterWeights([p, q])
    assert [m.dtype for m in mw.params] == [torch.float32, torch.float32] and mw.params[1] is q
    with torch.no_grad():
        mw.masters[0].add_(1e-4)  # below bf16 resolution of p: lives only in the master
    state = {k: v.clone() for k, v in mw.state_dict().items()}
    other = MasterWeights([torch.nn.Parameter(torch.zeros(5, dtype=torch.bfloat16)), q])
    other.load_state_dict(state)
    assert torch.equal(other.masters[0], mw.masters[0])
    assert torch.equal(other.low[0], mw.masters[0].to(torch.bfloat16))
