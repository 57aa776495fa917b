"""Adam with discriminative fine-tuning (Howard and Ruder 2018, arXiv 1801.06146, eq. 2):
each layer gets its own learning rate, ``eta^{l-1} = eta^l / 2.6`` going down the stack."""

from dataclasses import dataclass, field
from typing import Dict, Iterable, List, Optional

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


LAYER_GROUP_PREFIX = "layer_depth_"


def set_layer_depth(param: torch.Tensor, depth: int) -> None:
    """Tag ``param`` with its layer depth (0: the top) for :class:`DiscriminativeAdam`.

    The tag is fairseq's ``param_group`` attribute, which fairseq's ``--fp16``/``--bf16``
    wrapper copies onto the fp32 master copies it optimizes (it copies no other tag)."""
    param.param_group = f"{LAYER_GROUP_PREFIX}{depth}"


def layer_depth_of(param: torch.Tensor) -> Optional[int]:
    """The depth :func:`set_layer_depth` gave ``param``, or None."""
    group = getattr(param, "param_group", None)
    if isinstance(group, str) and group.startswith(LAYER_GROUP_PREFIX):
        return int(group[len(LAYER_GROUP_PREFIX):])
    return None


def group_by_layer_depth(params: Iterable[torch.Tensor]) -> List[Dict]:
    """Torch param groups ``{"params": [...], "layer_depth": d}``, by increasing ``d``,
    from each parameter's :func:`layer_depth_of` (0 for an untagged one among tagged ones).

    Raises FairseqAWDError if no parameter is tagged: per-layer rates would silently be
    plain Adam."""
    params = list(params)
    depths = [layer_depth_of(p) for p in params]
    if all(d is None for d in depths):
        raise FairseqAWDError(
            f"discriminative_adam: none of the {len(params)} parameters it was given has a "
            "layer depth; use it with the plugin's AWD models, and with --fp16 add "
            "--fp16-no-flatten-grads (fairseq flattens the fp32 copies into one tensor, "
            "which cannot have per-layer rates) or use --memory-efficient-fp16"
        )
    groups: Dict[int, List[torch.Tensor]] = {}
    for p, depth in zip(params, depths):
        groups.setdefault(depth or 0, []).append(p)
    return [{"params": groups[d], "layer_depth": d} for d in sorted(groups)]


@register_optimizer("discriminative_adam", dataclass=DiscriminativeAdamConfig)
class DiscriminativeAdam(FairseqAdam):
    """fairseq's Adam with one param group per layer depth, group lr ``lr / factor**depth``.

    ``set_lr(lr)`` (what fairseq's schedulers call) sets every group's rate from ``lr``;
    ``get_lr`` returns ``lr`` itself, the rate of depth 0. The depths are tags the AWD
    models put on their parameters (:func:`set_layer_depth`); they reach the fp32 copies of
    ``--fp16 --fp16-no-flatten-grads`` and ``--bf16``, and ``--memory-efficient-fp16``
    optimizes the model's own parameters. fairseq's default ``--fp16`` flattens the copies
    into one tensor: refused with one line.
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
