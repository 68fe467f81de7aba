"""NaN / Inf guards: a teacher with non-finite weights is refused at load, a training run stops at the
first non-finite loss or gradient norm, and no checkpoint with non-finite weights is written.

The training-loop guard costs no host sync per step: each step records, on the device, the first
step whose loss or gradient norm was not finite; the host reads it (one sync) only when the loop
logs or saves, and stops there, naming that step."""

from __future__ import annotations

import torch

from .errors import CheckFailed, UserError


def nonfinite_tensors(named) -> list[str]:
    """Names of floating tensors holding a NaN or Inf, from ``(name, tensor)`` pairs; one host sync
    for all of them."""
    names, flags = [], []
    for name, t in named:
        if t.is_floating_point() or t.is_complex():
            names.append(name)
            flags.append(torch.isfinite(t.detach()).all())
    if not flags:
        return []
    ok = torch.stack([f.to(flags[0].device) for f in flags]).cpu().tolist()
    return [n for n, good in zip(names, ok) if not good]


def require_finite_teacher(module, what: str = "teacher") -> None:
    bad = nonfinite_tensors(module.state_dict().items())
    if bad:
        raise UserError(f"{what}: NaN/Inf in {len(bad)} weight tensor{'s' if len(bad) > 1 else ''} (e.g. {bad[0]}): its targets would be NaN and "
                        "so would the student; pass a teacher with finite weights (an earlier checkpoint of it)")


class NonFiniteWeights(CheckFailed):
    pass


def require_finite_weights(module, what: str = "student") -> None:
    """Refuse to write a checkpoint of weights holding NaN/Inf."""
    bad = nonfinite_tensors(module.state_dict().items())
    if bad:
        raise NonFiniteWeights(f"{what}: NaN/Inf in {len(bad)} weight tensor{'s' if len(bad) > 1 else ''} (e.g. {bad[0]}); no checkpoint was written")


class NonFiniteLoss(CheckFailed):
    pass


class FiniteGuard:
    """Watches the loss and the gradient norm of each step without syncing; ``check`` raises
    ``NonFiniteLoss`` naming the first bad step."""

    def __init__(self):
        self._first = None  # step (on the device), -1 while every step was finite
        self._loss = None
        self._grad = None

    def observe(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor | None) -> None:
        loss = loss.detach().float().reshape(())
        grad = grad_norm.detach().float().reshape(()).to(loss.device) if grad_norm is not None else torch.zeros((), device=loss.device)
        if self._first is None:
            self._first = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._loss = torch.zeros((), device=loss.device)
            self._grad = torch.zeros((), device=loss.device)
        new = (~(torch.isfinite(loss) & torch.isfinite(grad))) & (self._first < 0)
        self._first = torch.where(new, torch.full_like(self._first, step), self._first)
        self._loss = torch.where(new, loss, self._loss)
        self._grad = torch.where(new, grad, self._grad)

    def first_bad(self, gather=None) -> tuple[int, float, float] | None:
        """(step, loss, grad norm) of the first non-finite step, over every process when
        ``gather`` (accelerate's) is given; one sync."""
        if self._first is None:
            return None
        packed = torch.stack([self._first.double(), self._loss.double(), self._grad.double()]).reshape(1, 3)
        if gather is not None:
            packed = gather(packed)
        rows = [r for r in packed.cpu().tolist() if r[0] >= 0]
        if not rows:
            return None
        step, loss, grad = min(rows, key=lambda r: r[0])
        return int(step), loss, grad

    def check(self, hint: str, gather=None, last_saved: str | None = None) -> None:
        bad = self.first_bad(gather)
        if bad is None:
            return
        step, loss, grad = bad
        what = f"the loss became {loss:g}" if not _finite(loss) else f"the gradient norm became {grad:g} (loss {loss:.4g})"
        kept = (f"checkpoints/last is still {last_saved}, from before it" if last_saved else
                "nothing was saved")
        raise NonFiniteLoss(f"train: {what} at step {step}; stopped, {kept}. Likely cause: {hint}")


def _finite(x: float) -> bool:
    return x == x and abs(x) != float("inf")
