"""AdamW with stochastic rounding: bf16 weights updated without fp32 master copies.

``precision.MasterWeights`` keeps an fp32 copy of every bf16 trainable weight (and of its
gradient) so that AdamW steps smaller than half a bf16 ulp are not rounded away; with fp32 AdamW
moments that is 16 bytes per trainable parameter where LeRobot's own fine-tune (AdamW straight on
the bf16 weights, bf16 moments) spends 4. Stochastic rounding keeps the sub-ulp steps in
expectation instead: each updated weight is computed in fp32, one tensor at a time, and rounded to
one of its two bf16 neighbours with probability given by the distance, so ``E[rounded] = exact``.
The optimizer state is LeRobot's (two moments in the weight's dtype), so the memory is a normal
fine-tune's.

The arithmetic is ``torch.optim.AdamW``'s (decoupled weight decay, bias-corrected moments, the same
operation order; bit-identical on fp32 weights, where nothing is rounded). The rounding draws from
the optimizer's own generator, seeded per (``seed``, step, parameter): the training noise and data
order stay those of an fp32-master run with the same seed, and a run resumed from LeRobot's saved
optimizer state (moments and step counts) rounds exactly as the uninterrupted run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def stochastic_round_bf16(x: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """fp32 ``x`` to bf16, rounding each value up or down (in magnitude) with probability given by
    its distance to the two bf16 neighbours. Values that bf16 holds exactly are unchanged."""
    bits = x.contiguous().view(torch.int32)
    noise = torch.randint(0, 1 << 16, bits.shape, dtype=torch.int32, device=x.device, generator=generator)
    # Adding 16 random low bits and cutting them off rounds the magnitude up with probability
    # (low bits) / 2^16; the result has zero low bits, so the cast to bf16 is exact.
    return ((bits + noise) & -65536).view(torch.float32).to(torch.bfloat16)


class StochasticRoundingAdamW(torch.optim.Optimizer):
    """``torch.optim.AdamW`` whose bf16 weights are written by stochastic rounding (see the module)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 1e-2, seed: int = 0):
        super().__init__(params, {"lr": lr, "betas": tuple(betas), "eps": eps, "weight_decay": weight_decay})
        self.seed = seed
        self._generators: dict[torch.device, torch.Generator] = {}

    def _generator(self, device: torch.device, step: int, index: int) -> torch.Generator:
        g = self._generators.get(device)
        if g is None:
            g = self._generators[device] = torch.Generator(device=device)
        return g.manual_seed((self.seed * 1_000_003 + step * 7_919 + index) % (1 << 63))

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        index = -1
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps, wd = group["lr"], group["eps"], group["weight_decay"]
            for p in group["params"]:
                index += 1
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = torch.tensor(0.0)
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                step = state["step"].item()
                grad = p.grad.float()
                exp_avg = state["exp_avg"].float().lerp_(grad, 1 - beta1)
                exp_avg_sq = state["exp_avg_sq"].float().mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                state["exp_avg"].copy_(exp_avg)
                state["exp_avg_sq"].copy_(exp_avg_sq)
                denom = (exp_avg_sq.sqrt() / math.sqrt(1 - beta2**step)).add_(eps)
                new = p.float() if p.dtype != torch.float32 else p
                new.mul_(1 - lr * wd).addcdiv_(exp_avg, denom, value=-lr / (1 - beta1**step))
                if p.dtype == torch.bfloat16:
                    p.copy_(stochastic_round_bf16(new, self._generator(p.device, int(step), index)))
                elif new is not p:
                    p.copy_(new)
        return loss
