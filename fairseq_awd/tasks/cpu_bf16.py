"""``--bf16 --cpu``: fairseq's bf16 training (a bf16 model, fp32 master weights in
``FP16Optimizer``) on the CPU, where bf16 matrix products run on AMX/AVX-512-BF16.

fairseq 0.12 wrote ``--bf16`` for TPUs: its ``add_defaults`` turns on ``--tpu`` whenever
``--bf16`` is given, and the trainer then asks ``torch_xla`` for a device. The plugin's
tasks are the first code that sees the parsed configuration after that, before the trainer
is built, so they turn ``--tpu`` off again where ``--cpu`` says the run is on the CPU.
"""

import logging

from omegaconf import DictConfig, open_dict

logger = logging.getLogger(__name__)


def allow_bf16_on_cpu(task_cfg) -> None:
    """Undo the ``--tpu`` that ``--bf16`` implied in the run's configuration (the root of
    ``task_cfg``) when ``--cpu`` is set; nothing otherwise (a TPU run keeps its flag)."""
    if not isinstance(task_cfg, DictConfig):
        return  # a task built directly from its dataclass: there is no run configuration
    root = task_cfg._get_parent()  # omegaconf's parent link: fairseq passes cfg.task
    common = root.get("common") if isinstance(root, DictConfig) else None
    if common is None or not (common.get("bf16") and common.get("cpu") and common.get("tpu")):
        return
    with open_dict(common):
        common.tpu = False
    logger.info("--bf16 --cpu: bf16 model with fp32 master weights on the CPU "
                "(the --tpu that fairseq's --bf16 implies is turned off)")
