"""Non-finite guard for the single-process trainers (SFT, DPO): a step whose gradients hold a NaN or an inf is
skipped, not applied, and reported; ``optim.max_nonfinite_steps`` of them in a row stop the run.

Why a callback at ``on_pre_optimizer_step``: HF's Trainer has already clipped (a NaN norm makes every gradient NaN)
and is about to call ``optimizer.step()``; setting every ``.grad`` to None there makes torch's optimizers leave the
weights and their moment estimates untouched for that step. A non-finite loss gives non-finite gradients, so this
one check covers both. The learning-rate schedule still advances: the step is counted, only its update is dropped.
"""

from __future__ import annotations

import math

import torch
from transformers import TrainerCallback

from hyrl.rl.run import RunContext, latest_checkpoint


class NonFiniteError(RuntimeError):
    """Too many non-finite steps in a row; the message names the last good checkpoint."""


def grad_norm(model: torch.nn.Module) -> float:
    """The global L2 norm of the model's gradients (inf or nan when any gradient is)."""
    norms = [p.grad.detach().float().norm() for p in model.parameters() if p.grad is not None]
    return torch.stack(norms).norm().item() if norms else 0.0


class SkipNonFinite(TrainerCallback):
    """Drops the update of a step with non-finite gradients, logging ``guard/skipped_step``; raises NonFiniteError
    after ``max_in_row`` such steps in a row."""

    def __init__(self, ctx: RunContext):
        self.ctx, self.max_in_row, self.in_row = ctx, ctx.recipe.optim.max_nonfinite_steps, 0

    def on_pre_optimizer_step(self, args, state, control, model=None, **kwargs):
        norm = grad_norm(model)
        if math.isfinite(norm):
            self.in_row = 0
            return
        step = state.global_step + 1  # the step being made (global_step counts finished ones)
        self.in_row += 1
        for p in model.parameters():
            p.grad = None
        print(f"hyrl: step {step}: non-finite gradient norm ({norm}); optimizer step skipped "
              f"({self.in_row} in a row; the run stops at {self.max_in_row})")
        self.ctx.metrics.log(step, {"guard/skipped_step": step, "guard/nonfinite_in_row": self.in_row})
        if self.in_row >= self.max_in_row:
            last = latest_checkpoint(self.ctx)
            where = f"the last good checkpoint is {last}" if last else "no checkpoint was saved"
            raise NonFiniteError(f"steps {step - self.in_row + 1}-{step}: {self.in_row} non-finite gradient norms "
                                 f"in a row (optim.max_nonfinite_steps: {self.max_in_row}); {where} (fix: a lower "
                                 f"optim.lr or a look at the data of those steps)")
