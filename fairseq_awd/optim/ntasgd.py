"""Non-monotonically triggered ASGD (NT-ASGD): Merity et al. 2017, section 3, Algorithm 1.

:class:`NTASGD` is the plain PyTorch optimizer; :class:`FairseqNTASGD` registers it with
fairseq as ``--optimizer ntasgd``.
"""

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Optional, Union

import torch
from fairseq.dataclass import FairseqDataclass
from fairseq.optim import FairseqOptimizer, register_optimizer
from fairseq.optim.fp16_optimizer import _FP16OptimizerMixin
from omegaconf import II, DictConfig

from fairseq_awd.errors import FairseqAWDError

Params = Union[Iterable[torch.Tensor], Iterable[dict]]
LOW_PRECISION = (torch.float16, torch.bfloat16)


class NTASGD(torch.optim.Optimizer):
    """SGD that starts averaging its iterates once validation stops improving.

    Merity et al. 2017 (arXiv 1708.02182), section 3, Algorithm 1, as run by the reference
    AWD-LSTM ``main.py``:

    * every :meth:`step` is SGD with L2 weight decay, ``p <- p - lr * (grad + weight_decay * p)``,
      no momentum: the arithmetic of ``torch.optim.SGD(lr, weight_decay=weight_decay)``;
    * :meth:`observe_validation_loss` is the non-monotone trigger, called once per validation;
    * once the trigger has fired, each step also updates a running average ``ax`` of the
      iterates, exactly as the ``torch.optim.ASGD(lr, t0=0, lambd=0, weight_decay=...)`` that
      the reference switches to: after the ``n``-th step since the switch
      ``ax <- ax + (p - ax) / max(1, n - 1)``, i.e. ``ax`` is the first iterate for ``n = 1``
      and the mean of iterates ``2..n`` for ``n >= 2`` (torch's ASGD uses ``mu = 1`` for the
      first two steps);
    * :meth:`use_average_weights` / :meth:`use_raw_weights` swap ``ax`` into the parameters for
      evaluation or checkpointing and back (the reference does the same around validation).

    Unlike the reference, the learning rate is not reset to its initial value at the switch:
    ``param_groups[*]["lr"]`` is used as it is, so an lr scheduler keeps control of it.

    With ``average_from_start`` (the reference's fine-tuning stage, ``finetune.py``) the
    optimizer averages from its first step, exactly ``torch.optim.ASGD(t0=0, lambd=0)``, and
    keeps recording validation losses; the non-monotone condition then means that
    fine-tuning is done (:attr:`finished`) instead of switching to averaging.

    State, all saved by :meth:`state_dict`:

    * ``param_groups[0]["val_history"]``: validation losses observed before the switch (all
      of them with ``average_from_start``);
    * ``param_groups[0]["averaging"]``: whether the trigger has fired;
    * ``param_groups[0]["swapped"]``: whether the parameters currently hold ``ax``;
    * ``param_groups[0]["finished"]``: with ``average_from_start``, whether the condition fired;
    * ``state[p]["ax"]``: average of the iterates, shape of ``p``;
    * ``state[p]["n"]``: number of steps of ``p`` since the switch;
    * ``state[p]["raw"]``: the SGD iterate of ``p``, only while swapped.
    """

    def __init__(
        self, params: Params, lr: float, weight_decay: float = 0.0, nonmono: int = 5,
        average_from_start: bool = False,
    ) -> None:
        if lr < 0.0:
            raise FairseqAWDError(f"--lr must be non-negative, got {lr}")
        if weight_decay < 0.0:
            raise FairseqAWDError(f"--weight-decay must be non-negative, got {weight_decay}")
        if nonmono < 1:
            raise FairseqAWDError(f"--nonmono must be at least 1, got {nonmono}")
        super().__init__(params, dict(lr=lr, weight_decay=weight_decay, nonmono=nonmono))
        self.param_groups[0].update(
            val_history=[], averaging=average_from_start, swapped=False,
            average_from_start=average_from_start, finished=False,
        )

    @property
    def averaging(self) -> bool:
        """Whether iterates are being averaged: the non-monotone trigger has fired, or the
        optimizer averages from the start."""
        group = self.param_groups[0]
        return bool(group["averaging"] or group.get("average_from_start", False))

    @property
    def finished(self) -> bool:
        """With ``average_from_start``: whether the non-monotone condition has fired, i.e.
        the fine-tuning stage is over."""
        return bool(self.param_groups[0].get("finished", False))

    @property
    def swapped(self) -> bool:
        """Whether the parameters currently hold the averaged weights ``ax``."""
        return bool(self.param_groups[0]["swapped"])

    def start_averaging(self) -> None:
        """Switch to averaging now, without waiting for the trigger (the ASGD phase of
        Algorithm 1); the average starts with the next step."""
        self.param_groups[0]["averaging"] = True

    def observe_validation_loss(self, loss: float) -> bool:
        """Record a validation loss; return True iff the non-monotone condition fires now.

        The condition of Algorithm 1 (``nonmono`` is its ``n``): more than ``nonmono`` losses
        have been seen and ``loss`` is worse than the best of all but the last ``nonmono`` of
        them. ``loss`` is appended to the history afterwards, whether or not it fired.
        Training from scratch, firing switches to averaging and later losses are no longer
        recorded, as in the reference's ``main.py``; with ``average_from_start``, firing sets
        :attr:`finished` (its ``finetune.py`` stops there) and losses stay recorded.
        """
        group = self.param_groups[0]
        from_start = group.get("average_from_start", False)
        if self.averaging and not from_start:
            return False
        loss = float(loss)
        history, nonmono = group["val_history"], group["nonmono"]
        fires = len(history) > nonmono and loss > min(history[:-nonmono])
        group["val_history"] = history + [loss]
        if fires and from_start:
            group["finished"] = True
        elif fires:
            self.start_averaging()
        return fires

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """SGD step on the raw iterate (restored first if swapped), then, when averaging,
        update ``ax``. ``closure`` re-evaluates the loss, as in ``torch.optim``.

        fp16/bf16 parameters (fairseq's ``--memory-efficient-fp16``) are updated in fp32
        and rounded back; their ``ax`` is kept in fp32."""
        self.use_raw_weights()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        averaging = self.averaging
        for group in self.param_groups:
            lr, weight_decay = group["lr"], group["weight_decay"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("NTASGD does not support sparse gradients")
                p32 = p.float() if p.dtype in LOW_PRECISION else p
                grad = p.grad.to(p32.dtype)
                d_p = grad if weight_decay == 0 else grad.add(p32, alpha=weight_decay)
                p32.add_(d_p, alpha=-lr)
                if p32 is not p:
                    p.copy_(p32)
                if averaging:
                    self._update_average(p, p32)
        return loss

    def _update_average(self, p: torch.Tensor, p32: torch.Tensor) -> None:
        state = self.state[p]
        if "ax" not in state:
            state["ax"] = torch.clone(p32, memory_format=torch.preserve_format)
            state["n"] = 0
        state["n"] += 1
        mu = 1.0 / max(1, state["n"] - 1)
        if mu == 1.0:
            state["ax"].copy_(p32)
        else:
            state["ax"].add_(p32.sub(state["ax"]).mul_(mu))

    def _params(self) -> Iterable[torch.Tensor]:
        for group in self.param_groups:
            yield from group["params"]

    @torch.no_grad()
    def use_average_weights(self) -> None:
        """Copy ``ax`` into the parameters, keeping the raw iterate in ``state[p]["raw"]``.

        No-op before the switch or when already swapped; parameters without an average yet
        (no step since the switch) keep their value.
        """
        group = self.param_groups[0]
        if not self.averaging or group["swapped"]:
            return
        for p in self._params():
            state = self.state.get(p, {})
            if "ax" in state:
                state["raw"] = torch.clone(p, memory_format=torch.preserve_format)
                p.copy_(state["ax"])
        group["swapped"] = True

    @torch.no_grad()
    def use_raw_weights(self) -> None:
        """Copy the raw iterates saved by :meth:`use_average_weights` back; no-op if not
        swapped."""
        group = self.param_groups[0]
        if not group["swapped"]:
            return
        for p in self._params():
            state = self.state.get(p, {})
            if "raw" in state:
                p.copy_(state.pop("raw"))
        group["swapped"] = False


@dataclass
class NTASGDConfig(FairseqDataclass):
    nonmono: int = field(
        default=5,
        metadata={
            "help": "non-monotone interval: switch to averaging when the validation loss is "
            "worse than the best loss older than the last N checks"
        },
    )
    weight_decay: float = field(
        default=1.2e-6, metadata={"help": "L2 weight decay (the reference's --wdecay)"}
    )
    average_from_start: bool = field(
        default=False,
        metadata={
            "help": "the fine-tuning stage (the reference's finetune.py): average the iterates "
            "from the first step (ASGD with t0=0) and stop training when the non-monotone "
            "condition fires on the averaged model's validation loss"
        },
    )
    lr: List[float] = II("optimization.lr")


@register_optimizer("ntasgd", dataclass=NTASGDConfig)
class FairseqNTASGD(FairseqOptimizer):
    """fairseq wrapper of :class:`NTASGD` (NT-ASGD, Merity et al. 2017, section 3).

    The ``awd_language_modeling`` task drives it: :func:`show_raw_weights` before each
    update's forward pass, :func:`show_average_weights` after each step, and
    :meth:`NTASGD.observe_validation_loss` after each validation. It works under fairseq's
    ``--fp16``/``--bf16`` (fp32 master copies) and ``--memory-efficient-fp16`` wrappers.
    """

    def __init__(self, cfg: NTASGDConfig, params: Params) -> None:
        check_task_drives_ntasgd(cfg)
        super().__init__(cfg)
        self._optimizer = NTASGD(params, **self.optimizer_config)

    @property
    def optimizer_config(self) -> dict:
        """
        Return a kwarg dictionary that will be used to override optimizer
        args stored in checkpoints. This allows us to load a checkpoint and
        resume training using a different set of optimizer args, e.g., with a
        different learning rate.
        """
        lr = self.cfg.lr[0] if isinstance(self.cfg.lr, Collection) else self.cfg.lr
        return {"lr": lr, "weight_decay": self.cfg.weight_decay, "nonmono": self.cfg.nonmono,
                "average_from_start": getattr(self.cfg, "average_from_start", False)}

    @property
    def supports_flat_params(self) -> bool:
        return True

    @property
    def supports_memory_efficient_fp16(self) -> bool:
        return True

    @property
    def averaging(self) -> bool:
        return self._optimizer.averaging

    @property
    def finished(self) -> bool:
        return self._optimizer.finished

    def observe_validation_loss(self, loss: float) -> bool:
        return self._optimizer.observe_validation_loss(loss)


def check_task_drives_ntasgd(cfg) -> None:
    """Raise FairseqAWDError if the run's task (the root of the optimizer's ``cfg``) does
    not drive NT-ASGD: its averaging switch lives in the task's validation hooks, so under
    another task (e.g. fairseq's ``language_modeling``) it would be plain SGD, silently.
    A task drives it by setting ``drives_ntasgd = True``. Nothing is checked for a config
    without a run around it (an optimizer built directly)."""
    root = cfg._get_parent() if isinstance(cfg, DictConfig) else None
    task = root.get("task") if isinstance(root, DictConfig) else None
    name = task.get("_name") if isinstance(task, DictConfig) else None
    if name is None:
        return
    from fairseq.tasks import TASK_REGISTRY

    if not getattr(TASK_REGISTRY.get(name), "drives_ntasgd", False):
        raise FairseqAWDError(
            f"--optimizer ntasgd needs --task awd_language_modeling: under --task {name} its "
            "switch to averaging (driven by that task's validation hooks) would never fire; "
            "use --task awd_language_modeling, or another optimizer (e.g. --optimizer sgd)"
        )


def ntasgd_of(optimizer: FairseqOptimizer) -> Optional[NTASGD]:
    """The :class:`NTASGD` a fairseq optimizer steps, through fairseq's mixed-precision
    wrappers (whose ``optimizer`` is the innermost torch optimizer), or None."""
    inner = optimizer.optimizer
    return inner if isinstance(inner, NTASGD) else None


def show_average_weights(optimizer: FairseqOptimizer) -> None:
    """Put NT-ASGD's averaged weights into the model ``optimizer`` trains, keeping the raw
    iterate aside; a no-op for other optimizers, before the switch, or if already there."""
    ntasgd = ntasgd_of(optimizer)
    if ntasgd is not None and ntasgd.averaging and not ntasgd.swapped:
        ntasgd.use_average_weights()
        _copy_master_weights_to_model(optimizer)


def show_raw_weights(optimizer: FairseqOptimizer) -> None:
    """Put the raw SGD iterate back into the model (undo :func:`show_average_weights`)."""
    ntasgd = ntasgd_of(optimizer)
    if ntasgd is not None and ntasgd.swapped:
        ntasgd.use_raw_weights()
        _copy_master_weights_to_model(optimizer)


def _copy_master_weights_to_model(optimizer: FairseqOptimizer) -> None:
    # Under --fp16/--bf16 NTASGD holds fp32 master copies, which fairseq copies into the
    # model only at the end of step(); a swap has to be copied the same way.
    if isinstance(optimizer, _FP16OptimizerMixin):
        optimizer._sync_fp32_params_to_fp16()
