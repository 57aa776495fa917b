"""Scale the learning rate of the next optimizer step only (AWD-LSTM's ``lr * seq_len / bptt``)."""

from typing import List, Optional

import torch


def torch_optimizer_of(optimizer) -> Optional[torch.optim.Optimizer]:
    """The ``torch.optim.Optimizer`` inside fairseq's optimizer wrappers (or None)."""
    while optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
        optimizer = getattr(optimizer, "optimizer", None)
    return optimizer


class StepLRScale:
    """Multiply every param group's lr by a factor for the next ``step()``, then restore it.

    The restore runs as a step post-hook, before fairseq's LR scheduler sets the next
    lr, so schedulers never see (or compound) the scaled value. Several calls before
    one step (``--update-freq``) keep the last factor.
    """

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.optimizer = optimizer
        self._base_lrs: Optional[List[float]] = None
        optimizer.register_step_post_hook(self._restore)

    def scale_next_step(self, factor: float) -> None:
        if self._base_lrs is None:
            self._base_lrs = [group["lr"] for group in self.optimizer.param_groups]
        for group, base in zip(self.optimizer.param_groups, self._base_lrs):
            group["lr"] = base * factor

    def _restore(self, optimizer, args, kwargs) -> None:
        if self._base_lrs is not None:
            for group, base in zip(optimizer.param_groups, self._base_lrs):
                group["lr"] = base
            self._base_lrs = None
