"""AWD-LSTM language models for fairseq: ``fairseq-train --user-dir fairseq_awd ...``."""

from fairseq_awd.checkpoint_compat import allow_fairseq_checkpoints
from fairseq_awd.checkpoint_safety import install_checkpoint_safety
from fairseq_awd.errors import FairseqAWDError, install_excepthook, running_a_command
from fairseq_awd.numpy_compat import allow_numpy2_in_fairseq

allow_fairseq_checkpoints()
install_checkpoint_safety()
allow_numpy2_in_fairseq()
if running_a_command():  # fairseq's CLIs import the plugin through --user-dir
    install_excepthook()

from fairseq_awd import criterions, models, optim, tasks  # noqa: E402,F401  (registration)
from fairseq_awd.hub import from_pretrained  # noqa: E402

__all__ = ["FairseqAWDError", "from_pretrained"]
__version__ = "0.1.0"
