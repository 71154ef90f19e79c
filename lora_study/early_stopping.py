"""Keeping a run's best adapter, and stopping it once validation stops improving: what HF
Trainer users get from `load_best_model_at_end` and `EarlyStoppingCallback`, for the adapter's
weights alone (no second copy of the base).

The base model's loss at step 0 is a reference, not a candidate: the adapter kept is one that
trained. An evaluation improves on the best so far when its loss is lower by more than
`min_delta` (Trainer's `early_stopping_threshold`); the best itself is the lowest loss seen.
"""

import math
from dataclasses import dataclass, field

import torch


@dataclass
class BestAdapter:
    """The adapter's weights at its lowest validation loss so far, and how many evaluations in a
    row have not improved on it."""

    patience: int = 0  # evaluations without improvement before the run stops; 0: it never stops early
    min_delta: float = 0.0  # how much lower a loss must be to count as an improvement
    keep: bool = True  # hold the best weights, and put them back at the end
    best_step: int = 0  # 0: no evaluation after training yet
    best_loss: float = math.inf
    without_improvement: int = 0
    weights: dict[str, torch.Tensor] = field(default_factory=dict)  # trainable tensors, on the CPU

    def saw(self, model: torch.nn.Module, step: int, eval_loss: float) -> None:
        """An evaluation of the adapter in `model` after `step` optimizer steps."""
        if step == 0:
            return  # the base model: a fresh adapter changes nothing
        improved = eval_loss < self.best_loss - self.min_delta
        self.without_improvement = 0 if improved else self.without_improvement + 1
        if eval_loss < self.best_loss:
            self.best_step, self.best_loss = step, eval_loss
            if self.keep:
                self.weights = {
                    name: p.detach().to("cpu", copy=True) for name, p in model.named_parameters() if p.requires_grad
                }

    @property
    def should_stop(self) -> bool:
        return self.patience > 0 and self.without_improvement >= self.patience

    def put_back(self, model: torch.nn.Module, last_step: int) -> int:
        """At the end of training: the best weights back into `model` if they are kept and are not
        the last step's. The step of the adapter `model` then holds."""
        if self.keep and self.best_step not in (0, last_step):
            self.restore(model)
            return self.best_step
        return last_step

    @torch.no_grad()
    def restore(self, model: torch.nn.Module) -> None:
        """Put the best weights back into `model` (nothing to do when none were kept)."""
        for name, p in model.named_parameters():
            if name in self.weights:
                p.copy_(self.weights[name])


def kept_words(best_step: int, stopped_early: int, planned_steps: int) -> str:
    """What a run kept and why it ended, in words; empty when it kept its last of all planned steps."""
    words = f"stopped early at step {stopped_early} of {planned_steps}; " if stopped_early else ""
    if best_step < (stopped_early or planned_steps):
        words += f"kept the adapter of step {best_step} (its lowest validation loss)"
    return words.removesuffix("; ")
