"""How the student's trainable weights are updated: LeRobot's AdamW and cosine-with-warm-up presets from
the teacher's config with ``train``'s overrides (``make_optimizer``; a ``--resume --steps N`` extension
refits the schedule: ``extend_schedule``), and for bf16 weights either fp32 master copies
(``MasterWeights``) or AdamW with stochastic rounding (``StochasticRoundingAdamW``): ``--update``.

**fp32 master weights** (``--update fp32-masters``). A SmolVLA teacher fine-tuned from ``smolvla_base``
(``load_vlm_weights: true``) holds its action expert in bf16, and so does the student copied from it.
AdamW steps of size ``lr`` (1e-4) on bf16 weights of magnitude ~0.05 are below half a bf16 ulp (2^-9
relative) about as often as not and round away to nothing. The usual cure in mixed-precision training:
the optimizer updates fp32 copies ("masters") and the model's bf16 weights are set from them after each
step. The forward and backward passes stay in the checkpoint's dtypes, so what is trained is exactly
what is saved and run (docs/fidelity.md). Measured on the tiny world (600 steps, batch 8, lr 1e-4, same
seed): MSE ratio 0.43 with bf16 updates, 0.34 with fp32 masters.

**Stochastic rounding** (``--update bf16-sr``). ``MasterWeights`` keeps an fp32 copy of every bf16
trainable weight (and of its gradient) so that AdamW steps smaller than half a bf16 ulp are not rounded
away; with fp32 AdamW moments that is 16 bytes per trainable parameter where LeRobot's own fine-tune
(AdamW straight on the bf16 weights, bf16 moments) spends 4. Stochastic rounding keeps the sub-ulp
steps in expectation instead: each updated weight is computed in fp32, one tensor at a time, and
rounded to one of its two bf16 neighbours with probability given by the distance, so ``E[rounded] =
exact``. The optimizer state is LeRobot's (two moments in the weight's dtype), so the memory is a
normal fine-tune's.

The arithmetic is ``torch.optim.AdamW``'s (decoupled weight decay, bias-corrected moments, the same
operation order; bit-identical on fp32 weights, where nothing is rounded). The rounding draws from the
optimizer's own generator, seeded per (``seed``, step, parameter): the training noise and data order
stay those of an fp32-master run with the same seed, and a run resumed from LeRobot's saved optimizer
state (moments and step counts) rounds exactly as the uninterrupted run.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..config import ReflowConfig

LOW_PRECISION = (torch.bfloat16, torch.float16)


class MasterWeights:
    """Pairs each low-precision trainable parameter with an fp32 master; fp32 parameters are
    stepped as they are. Give :attr:`params` to the optimizer; call :meth:`grads_to_masters` after
    backward and :meth:`masters_to_params` after the optimizer step."""

    def __init__(self, params: list[nn.Parameter], enabled: bool = True):
        """enabled=False: no masters (``params`` are stepped as they are; the calls do nothing)."""
        self.low = [p for p in params if p.dtype in LOW_PRECISION] if enabled else []
        self.masters = [p.detach().float().requires_grad_(True) for p in self.low]
        self._grads = [torch.zeros_like(m) for m in self.masters]  # reused every step
        masters = iter(self.masters)
        self.params: list[Tensor] = [next(masters) if enabled and p.dtype in LOW_PRECISION else p for p in params]

    @property
    def active(self) -> bool:
        return bool(self.low)

    @torch.no_grad()
    def grads_to_masters(self) -> None:
        """One fused copy (and cast) of every low-precision gradient into its master's buffer."""
        if not self.low:
            return
        have = [(p, m, b) for p, m, b in zip(self.low, self.masters, self._grads, strict=True) if p.grad is not None]
        if have:
            torch._foreach_copy_([b for _, _, b in have], [p.grad for p, _, _ in have])
        for p, m, b in zip(self.low, self.masters, self._grads, strict=True):
            m.grad = b if p.grad is not None else None
            p.grad = None

    @torch.no_grad()
    def masters_to_params(self) -> None:
        if self.low:
            torch._foreach_copy_(self.low, self.masters)

    def state_dict(self) -> dict[str, Tensor]:
        return {str(i): m.detach().contiguous() for i, m in enumerate(self.masters)}

    @torch.no_grad()
    def load_state_dict(self, state: dict[str, Tensor]) -> None:
        if len(state) != len(self.masters):
            raise ValueError(f"{len(state)} master tensors saved, {len(self.masters)} expected")
        for i, m in enumerate(self.masters):
            m.copy_(state[str(i)])
        self.masters_to_params()



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


def warmup_steps(rcfg: ReflowConfig) -> int:
    """The scheduler's warm-up: ``--warmup-steps``, else 5% of the run."""
    return rcfg.warmup_steps if rcfg.warmup_steps is not None else max(1, rcfg.steps // 20)


def make_optimizer(params, teacher_cfg, rcfg: ReflowConfig):
    """LeRobot's AdamW + cosine-with-warmup presets from the teacher config, our overrides on top,
    over ``params``. Returns the optimizer, the scheduler, the clip norm and the settings used."""
    opt_cfg = teacher_cfg.get_optimizer_preset()
    base_lr = rcfg.lr if rcfg.lr is not None else opt_cfg.lr
    opt_cfg.lr = base_lr * rcfg.lr_scale
    if rcfg.weight_decay is not None:
        opt_cfg.weight_decay = rcfg.weight_decay
    if rcfg.grad_clip_norm is not None:
        opt_cfg.grad_clip_norm = rcfg.grad_clip_norm
    sched_cfg = teacher_cfg.get_scheduler_preset()
    sched_cfg.peak_lr = opt_cfg.lr
    sched_cfg.decay_lr = min(sched_cfg.decay_lr, opt_cfg.lr)
    sched_cfg.num_decay_steps = rcfg.steps
    sched_cfg.num_warmup_steps = warmup_steps(rcfg)
    if rcfg.update == "bf16-sr":  # LeRobot's AdamW settings, bf16 weights written by stochastic rounding
        optimizer = StochasticRoundingAdamW(params, lr=opt_cfg.lr, betas=opt_cfg.betas, eps=opt_cfg.eps,
                                            weight_decay=opt_cfg.weight_decay, seed=rcfg.seed)
    else:
        optimizer = opt_cfg.build(params)
    lr_from = "--lr" if rcfg.lr is not None else "teacher config (LeRobot preset)"
    if rcfg.lr_scale != 1:
        lr_from = f"{rcfg.lr_scale:g} x {lr_from} ({base_lr:g})"
    used = {"update": rcfg.update, "lr": opt_cfg.lr, "lr_from": lr_from,
            "betas": list(opt_cfg.betas), "weight_decay": opt_cfg.weight_decay, "grad_clip_norm": opt_cfg.grad_clip_norm,
            "warmup_steps": sched_cfg.num_warmup_steps, "decay_lr": sched_cfg.decay_lr}
    return optimizer, sched_cfg.build(optimizer, rcfg.steps), opt_cfg.grad_clip_norm, used


def extend_schedule(optimizer, scheduler, step: int, steps_before: int, rcfg: ReflowConfig) -> dict:
    """A run resumed with a larger ``--steps``: the scheduler is LeRobot's cosine with warm-up built for
    the new length (``make_optimizer``), as ``lerobot-train --resume --steps N`` builds it; from
    ``step`` on the learning rate follows it (set here for the next step, not left at the value the
    old schedule had reached). Returns the lineage's record of the extension."""
    before = optimizer.param_groups[0]["lr"]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    after = optimizer.param_groups[0]["lr"]
    warmup = warmup_steps(rcfg)
    return {"from_step": step, "steps_before": steps_before, "steps": rcfg.steps, "lr_before": before, "lr_after": after,
            "schedule": f"LeRobot's cosine schedule with warm-up refitted to {rcfg.steps} steps (warm-up {warmup}), as "
                        f"lerobot-train --resume --steps refits it: from step {step} the learning rate follows it "
                        f"({after:.3g}; the {steps_before}-step schedule had reached {before:.3g})"}


def divergence_hint(lr: float, warmup: int, pairs: bool) -> str:
    """The likely cause named when the loss stops being finite."""
    hint = (f"a learning rate too high for this model (lr {lr:g} with {warmup} warm-up steps): "
            "lower --lr-scale (or --lr) or raise --warmup-steps")
    return hint + (", or NaN targets in the cached --pairs" if pairs else "") + " (the teacher's weights are finite)"
