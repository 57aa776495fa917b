"""Adam with discriminative fine-tuning (Howard and Ruder 2018, arXiv 1801.06146, eq. 2):
each layer gets its own learning rate, ``eta^{l-1} = eta^l / 2.6`` going down the stack."""

from dataclasses import dataclass, field
from typing import Dict, Iterable, List

import torch
from fairseq.optim import register_optimizer
from fairseq.optim.adam import FairseqAdam, FairseqAdamConfig

from fairseq_awd.errors import FairseqAWDError


@dataclass
class DiscriminativeAdamConfig(FairseqAdamConfig):
    discriminative_lr_factor: float = field(
        default=2.6,
        metadata={"help": "discriminative fine-tuning (ULMFiT eq. 2, eta^{l-1} = eta^l / 2.6): "
                  "a parameter at layer depth d (0: classifier head, 1: top recurrent layer, "
                  "...) is trained with lr / factor**d; 1 gives plain Adam"},
    )


def group_by_layer_depth(params: Iterable[torch.Tensor]) -> List[Dict]:
    """Torch param groups ``{"params": [...], "layer_depth": d}``, by increasing ``d``,
    from each parameter's ``layer_depth`` attribute (0 where it has none)."""
    groups: Dict[int, List[torch.Tensor]] = {}
    for p in params:
        if isinstance(p, dict):
            raise TypeError("discriminative_adam groups a flat list of parameters itself")
        groups.setdefault(int(getattr(p, "layer_depth", 0)), []).append(p)
    return [{"params": groups[d], "layer_depth": d} for d in sorted(groups)]


@register_optimizer("discriminative_adam", dataclass=DiscriminativeAdamConfig)
class DiscriminativeAdam(FairseqAdam):
    """fairseq's Adam with one param group per layer depth, group lr ``lr / factor**depth``.

    ``set_lr(lr)`` (what fairseq's schedulers call) sets every group's rate from ``lr``;
    ``get_lr`` returns ``lr`` itself, the rate of depth 0. The depths are attributes the
    model puts on its parameters (``AWDRNNClassifier.tag_layer_depths``); with ``--fp16``
    (not ``--memory-efficient-fp16``) fairseq optimizes fp32 copies, which lack them.
    """

    def __init__(self, cfg: DiscriminativeAdamConfig, params):
        if cfg.discriminative_lr_factor <= 0:
            raise FairseqAWDError(f"--discriminative-lr-factor must be positive, got "
                                  f"{cfg.discriminative_lr_factor}; ULMFiT uses 2.6")
        super().__init__(cfg, group_by_layer_depth(params))
        self.set_lr(self.optimizer_config["lr"])

    def _scale(self, group: Dict) -> float:
        return self.cfg.discriminative_lr_factor ** group["layer_depth"]

    def get_lr(self) -> float:
        group = self.param_groups[0]
        return group["lr"] * self._scale(group)

    def set_lr(self, lr: float) -> None:
        for group in self.param_groups:
            group["lr"] = lr / self._scale(group)

    def load_state_dict(self, state_dict, optimizer_overrides=None) -> None:
        """As fairseq's, but an overriding ``lr`` is spread over the depths again."""
        super().load_state_dict(state_dict, optimizer_overrides)
        if optimizer_overrides and "lr" in optimizer_overrides:
            self.set_lr(optimizer_overrides["lr"])
