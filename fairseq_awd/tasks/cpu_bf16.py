"""``--bf16 --cpu``: fairseq's bf16 training (a bf16 model, fp32 master weights in
``FP16Optimizer``) on the CPU, where bf16 matrix products run on AMX/AVX-512-BF16.

fairseq 0.12 wrote ``--bf16`` for TPUs: its ``add_defaults`` turns on ``--tpu`` whenever
``--bf16`` is given, and the trainer then asks ``torch_xla`` for a device. The plugin's
tasks are the first code that sees the parsed configuration after that, before the trainer
is built, so they turn ``--tpu`` off again where ``--cpu`` says the run is on the CPU.

Several processes cannot run ``--bf16 --cpu``: fairseq starts them, before any task is set
up, as TPU workers through ``torch_xla`` when ``--tpu`` is on, and otherwise one per GPU;
``refuse_bf16_cpu_ranks`` turns that into one line.

They also make glibc return freed memory of 128 KiB and more to the system at once
(``mallopt`` ``M_MMAP_THRESHOLD``/``M_TRIM_THRESHOLD``). The bf16 products' buffers change
size with every BPTT length, and under glibc's default, which raises its thresholds as
buffers are freed, the heap fragmented: a WikiText-2 pretraining grew past 7 GB and was
killed for memory; with these settings and the adaptive softmax's bucketed rows it stays
between 1.5 and 2.1 GB over an epoch (README, *Memory under --bf16 --cpu*).
"""

import ctypes
import ctypes.util
import functools
import logging

from fairseq.distributed import utils as distributed_utils
from omegaconf import DictConfig, open_dict

from fairseq_awd.errors import FairseqAWDError

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
    release_freed_memory_promptly()
    logger.info("--bf16 --cpu: bf16 model with fp32 master weights on the CPU "
                "(the --tpu that fairseq's --bf16 implies is turned off)")


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)
PROMPT_RELEASE_BYTES = 128 * 1024


def release_freed_memory_promptly() -> bool:
    """Fixed glibc thresholds: blocks of 128 KiB and more come from ``mmap`` and go back to
    the system when freed, and the heap's top is trimmed above 128 KiB. Returns False where
    the C library is not glibc (nothing is changed there)."""
    name = ctypes.util.find_library("c")
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_THRESHOLD, PROMPT_RELEASE_BYTES)
                and mallopt(M_TRIM_THRESHOLD, PROMPT_RELEASE_BYTES))


def refuse_bf16_cpu_ranks() -> None:
    """Wrap fairseq's ``distributed_utils.call_main`` (idempotent), through which every
    fairseq command starts its processes, to refuse ``--bf16 --cpu`` with
    ``--distributed-world-size`` above 1 in one line (fairseq would ask torch_xla for TPU
    workers). fairseq's commands look the function up when they call it."""
    original = distributed_utils.call_main
    if getattr(original, "_fairseq_awd_refuses_bf16_cpu_ranks", False):
        return

    @functools.wraps(original)
    def call_main(cfg, main, **kwargs):
        common, distributed = cfg.common, cfg.distributed_training
        if common.bf16 and common.cpu and distributed.distributed_world_size > 1:
            raise FairseqAWDError(
                f"--bf16 --cpu runs in one process, not {distributed.distributed_world_size}: "
                "fairseq starts several processes only on GPUs, or as TPU workers (which "
                "--bf16 implies); drop --distributed-world-size, or train on GPUs"
            )
        return original(cfg, main, **kwargs)

    call_main._fairseq_awd_refuses_bf16_cpu_ranks = True
    distributed_utils.call_main = call_main


refuse_bf16_cpu_ranks()  # the plugin is imported by --user-dir before the command starts
