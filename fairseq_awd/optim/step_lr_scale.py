"""Scale the learning rate of one optimizer step (AWD-LSTM's ``lr * seq_len / bptt``)."""

from contextlib import contextmanager
from typing import Iterator


@contextmanager
def scaled_learning_rates(optimizer, factor: float) -> Iterator[None]:
    """Multiply every param group's lr by ``factor`` inside the block, then put back the
    values it had (Merity et al. 2017, section 4.1: a window of ``seq_len`` tokens is
    trained with ``lr * seq_len / bptt``).

    ``optimizer`` is a ``torch.optim.Optimizer`` or a fairseq optimizer, whose
    ``param_groups`` are those of the torch optimizer inside its wrappers (``--fp16``
    included); each group keeps its own rate (``discriminative_adam``). The rates are put
    back before fairseq's scheduler sets the next one, so it never sees the scaled value.
    """
    groups = optimizer.param_groups
    base_lrs = [group["lr"] for group in groups]
    for group, lr in zip(groups, base_lrs):
        group["lr"] = lr * factor
    try:
        yield
    finally:
        for group, lr in zip(groups, base_lrs):
            group["lr"] = lr
