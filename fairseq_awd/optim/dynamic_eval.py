"""Dynamic evaluation: Krause, Kahembwe, Murray and Renals 2017 (arXiv 1709.07432).

:class:`DynamicEvaluation` adapts a trained language model to the text it is scoring: after
each segment has been scored, its gradient moves the weights, which also decay back towards the
trained ones. It is a plain ``torch.optim`` optimizer, not registered with fairseq.
"""

from collections.abc import Iterator
from typing import Callable, Iterable, Optional, Union

import torch

from fairseq_awd.errors import FairseqAWDError

Params = Union[Iterable[torch.Tensor], Iterable[dict]]

#: Defaults of the reference ``dynamiceval.py`` (github.com/benkrause/dynamic-evaluation, the
#: new hyperparameter scaling, not ``--oldhyper``), tuned for AWD-LSTM on Penn Treebank:
#: ``--lr`` (eta), ``--lamb`` (lambda), ``--epsilon``, ``--bptt`` (tokens per evaluated
#: segment) and ``--batch_size`` (of the gradient-statistics pass over the training data).
KRAUSE_PTB_LR = 5e-5
KRAUSE_PTB_DECAY = 2e-3
KRAUSE_EPSILON = 2e-5
KRAUSE_SEGMENT_LENGTH = 5
KRAUSE_STATISTICS_BATCH_SIZE = 100

_NO_STATISTICS = (
    "dynamic evaluation with rms=True needs gradient statistics: collect gradient statistics "
    "on training data first (accumulate_gradient_statistics() after the backward of each "
    "batch, then finish_gradient_statistics())"
)


def check_hyperparameters(lr: float, decay: float) -> None:
    """Refuse a negative (or NaN) learning rate or decay, naming the option."""
    if not lr >= 0.0:
        raise FairseqAWDError(f"--dynamic-lr must be non-negative, got {lr}")
    if not decay >= 0.0:
        raise FairseqAWDError(f"--dynamic-decay must be non-negative, got {decay}")


class DynamicEvaluation(torch.optim.Optimizer):
    """Gradient descent on the evaluated text with a decay back to the trained weights θ0.

    θ0 is recorded (cloned) when the optimizer is built. After the backward of each evaluated
    segment (model in eval mode, mean cross-entropy of the segment), :meth:`step` applies,
    elementwise, with every tensor of the shape of its parameter:

    * RMS variant, "RMS with an RMS global prior" (``rms=True``, the reference's update):
      ``θ <- θ + decay * min(decay_rate, 1 / decay) * (θ0 - θ) - lr * grad / (MS + epsilon)``;
    * SGD variant (``rms=False``): ``θ <- θ + decay * (θ0 - θ) - lr * grad``, which with
      ``decay = 0`` is ``torch.optim.SGD(lr)``.

    There is no decay term when ``decay == 0``; a parameter whose ``.grad`` is None gets only
    the decay term. The RMS variant needs statistics of the gradients on training data, taken at
    θ0 before evaluation: call :meth:`accumulate_gradient_statistics` after the backward of each
    training batch (the reference: eval mode, mean cross-entropy, batches of
    :data:`KRAUSE_STATISTICS_BATCH_SIZE` sequences of :data:`KRAUSE_SEGMENT_LENGTH` tokens),
    then :meth:`finish_gradient_statistics`, which sets, over the ``K`` batches,
    ``MS = sqrt(sum_k g_k**2 / K)`` and ``decay_rate = MS / gsum``, where the scalar ``gsum``
    is the mean over all parameters of ``MS.mean()``.

    State, all saved by :meth:`state_dict`: ``state[p]["theta0"]``, ``["grad_sq_sum"]``,
    ``["ms"]`` and ``["decay_rate"]`` (shape of ``p``) and ``["num_batches"]`` (an int).
    """

    def __init__(
        self,
        params: Params,
        lr: float,
        decay: float = 0.0,
        epsilon: float = KRAUSE_EPSILON,
        rms: bool = True,
    ) -> None:
        check_hyperparameters(lr, decay)
        if not epsilon > 0.0:
            raise FairseqAWDError(f"--dynamic-epsilon must be positive, got {epsilon}")
        super().__init__(params, dict(lr=lr, decay=decay, epsilon=epsilon, rms=rms))

    def add_param_group(self, param_group: dict) -> None:
        """Add a group as ``torch.optim`` does, recording its parameters' current values as
        θ0."""
        super().add_param_group(param_group)
        for p in self.param_groups[-1]["params"]:
            self.state[p]["theta0"] = p.detach().clone()

    def _params(self) -> Iterator[torch.Tensor]:
        for group in self.param_groups:
            yield from group["params"]

    @torch.no_grad()
    def accumulate_gradient_statistics(self) -> None:
        """Add ``grad**2`` to every parameter's sum; call after each statistics batch's backward.

        Batches are counted for all parameters together: a parameter whose ``.grad`` is None
        adds nothing, but the batch still counts in the mean of its squared gradients.
        """
        for p in self._params():
            state = self.state[p]
            if "grad_sq_sum" not in state:
                state["grad_sq_sum"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["num_batches"] = 0
            if p.grad is not None:
                state["grad_sq_sum"].addcmul_(p.grad, p.grad)
            state["num_batches"] += 1

    @torch.no_grad()
    def finish_gradient_statistics(self) -> None:
        """Set ``MS = sqrt(grad_sq_sum / num_batches)`` and ``decay_rate = MS / gsum``, with
        ``gsum`` the mean over parameters of ``MS.mean()``; may be called again after more
        batches."""
        params = list(self._params())
        if any(self.state[p].get("num_batches", 0) == 0 for p in params):
            raise FairseqAWDError(
                "no gradient statistics to finish: call accumulate_gradient_statistics() after "
                "the backward of each training batch first"
            )
        for p in params:
            state = self.state[p]
            state["ms"] = torch.sqrt(state["grad_sq_sum"] / state["num_batches"])
        gsum = sum(float(self.state[p]["ms"].mean()) for p in params) / len(params)
        if gsum == 0.0:
            raise FairseqAWDError(
                "the gradient statistics are all zero: collect them on training data with a "
                "loss that depends on the parameters"
            )
        for p in params:
            self.state[p]["decay_rate"] = self.state[p]["ms"] / gsum
            for cached in ("decay_weight_for", "inverse_rms_for"):
                self.state[p].pop(cached, None)

    @property
    def has_statistics(self) -> bool:
        """Whether :meth:`finish_gradient_statistics` has set ``MS`` and ``decay_rate``."""
        return all("ms" in self.state[p] for p in self._params())

    @torch.no_grad()
    def step(self, closure: Optional[Callable[[], float]] = None) -> Optional[float]:
        """Apply the update of the class docstring to every parameter. ``closure``
        re-evaluates the loss, as in ``torch.optim``."""
        if any(g["rms"] for g in self.param_groups) and not self.has_statistics:
            raise FairseqAWDError(_NO_STATISTICS)
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            lr, decay, epsilon, rms = (group[k] for k in ("lr", "decay", "epsilon", "rms"))
            for p in group["params"]:
                state = self.state[p]
                # One pass per term: the decay term as a lerp towards θ0 with the (cached)
                # elementwise rate, then the gradient term. The gradient term does not depend
                # on θ, so the order does not change the update.
                if decay != 0.0:
                    p.lerp_(state["theta0"], self._decay_weight(state, decay) if rms else decay)
                if p.grad is not None:
                    if rms:
                        p.addcmul_(p.grad, self._inverse_rms(state, epsilon), value=-lr)
                    else:
                        p.add_(p.grad, alpha=-lr)
        return loss

    @staticmethod
    def _decay_weight(state: dict, decay: float) -> torch.Tensor:
        """``decay * min(decay_rate, 1 / decay)``, cached per decay value."""
        if state.get("decay_weight_for") != decay:
            state["decay_weight"] = decay * state["decay_rate"].clamp(max=1.0 / decay)
            state["decay_weight_for"] = decay
        return state["decay_weight"]

    @staticmethod
    def _inverse_rms(state: dict, epsilon: float) -> torch.Tensor:
        """``1 / (MS + epsilon)``, cached."""
        if state.get("inverse_rms_for") != epsilon:
            state["inverse_rms"] = 1.0 / (state["ms"] + epsilon)
            state["inverse_rms_for"] = epsilon
        return state["inverse_rms"]

    @torch.no_grad()
    def reset(self) -> None:
        """Copy θ0 back into the parameters (e.g. between the runs of a grid search over lr
        and decay); the gradient statistics are kept."""
        for p in self._params():
            p.copy_(self.state[p]["theta0"])

    def set_hyperparameters(self, lr: float, decay: float) -> None:
        """Validate ``lr`` and ``decay`` and set them for every parameter group."""
        check_hyperparameters(lr, decay)
        for group in self.param_groups:
            group.update(lr=lr, decay=decay)
