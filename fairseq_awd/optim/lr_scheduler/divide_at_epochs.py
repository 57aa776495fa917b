"""The reference AWD-LSTM's ``--when`` schedule (Merity et al. 2017): divide the learning rate
by a constant factor after each of a list of epochs."""

from collections.abc import Collection
from dataclasses import dataclass, field
from typing import List, Optional

from fairseq.dataclass import FairseqDataclass
from fairseq.optim.lr_scheduler import FairseqLRScheduler, register_lr_scheduler
from omegaconf import II

from fairseq_awd.errors import FairseqAWDError


@dataclass
class DivideAtEpochsConfig(FairseqDataclass):
    when: List[int] = field(
        default_factory=list,
        metadata={
            "help": "divide the learning rate by --when-factor after each of these epochs, "
            "e.g. 100,150"
        },
    )
    when_factor: float = field(
        default=10.0, metadata={"help": "factor the learning rate is divided by at each --when"}
    )
    lr: List[float] = II("optimization.lr")


@register_lr_scheduler("divide_at_epochs", dataclass=DivideAtEpochsConfig)
class DivideAtEpochsSchedule(FairseqLRScheduler):
    """Learning rate during epoch ``e``: ``lr / when_factor ** k`` with ``k`` the number of
    ``--when`` epochs ``w < e``. A function of the epoch only, so a resumed run gets the same
    rate; constant within an epoch."""

    def __init__(self, cfg: DivideAtEpochsConfig, optimizer) -> None:
        super().__init__(cfg, optimizer)
        if isinstance(cfg.lr, Collection):
            if len(cfg.lr) != 1:
                raise FairseqAWDError(
                    f"divide_at_epochs takes a single --lr, got {list(cfg.lr)}"
                )
            self.base_lr = float(cfg.lr[0])
        else:
            self.base_lr = float(cfg.lr)
        if cfg.when_factor <= 0:
            raise FairseqAWDError(f"--when-factor must be positive, got {cfg.when_factor}")
        self.lr = self.lr_at_epoch(1)
        self.optimizer.set_lr(self.lr)

    def lr_at_epoch(self, epoch: int) -> float:
        """Learning rate during ``epoch`` (1-based)."""
        divisions = sum(1 for w in self.cfg.when if w < epoch)
        return self.base_lr / self.cfg.when_factor**divisions

    def step_begin_epoch(self, epoch: int) -> float:
        """Set the learning rate of the epoch that starts."""
        self.lr = self.lr_at_epoch(epoch)
        self.optimizer.set_lr(self.lr)
        return self.optimizer.get_lr()

    def step(self, epoch: int, val_loss: Optional[float] = None) -> float:
        """End of ``epoch``: track the best validation loss; the rate stays that of ``epoch``."""
        super().step(epoch, val_loss)
        self.lr = self.lr_at_epoch(epoch)
        self.optimizer.set_lr(self.lr)
        return self.optimizer.get_lr()

    def step_update(self, num_updates: int) -> float:
        """Keep the rate of the current epoch."""
        self.optimizer.set_lr(self.lr)
        return self.optimizer.get_lr()
