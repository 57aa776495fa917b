"""fairseq's sentence_prediction task with ULMFiT's gradual unfreezing (Howard and Ruder
2018, arXiv 1801.06146, section 3.3) and a check of the labels.

Own task because fairseq's has no per-epoch hook for unfreezing and lets labels missing
from label/dict.txt through as ``<unk>`` (fairseq-preprocess --srcdict maps them there).
"""

import contextlib
import logging
import os
from dataclasses import dataclass, field

from fairseq.data import data_utils
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY
from fairseq.tasks import register_task
from fairseq.tasks.sentence_prediction import SentencePredictionConfig, SentencePredictionTask
from omegaconf import OmegaConf, open_dict

from fairseq_awd.data.binarized_check import check_binarized
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.tasks.cpu_bf16 import allow_bf16_on_cpu

logger = logging.getLogger(__name__)


@dataclass
class AWDSentencePredictionConfig(SentencePredictionConfig):
    gradual_unfreezing: bool = field(
        default=False,
        metadata={"help": "ULMFiT's gradual unfreezing: epoch 1 trains only the classifier "
                  "head, each later epoch one more layer group from the top, i.e. epoch e "
                  "trains the groups of depth <= e - 1 (epoch 2 adds the top recurrent layer, "
                  "epoch L + 2 the embedding); with several GPUs use --ddp-backend legacy_ddp"},
    )


@register_task("awd_sentence_prediction", dataclass=AWDSentencePredictionConfig)
class AWDSentencePredictionTask(SentencePredictionTask):
    """``sentence_prediction`` plus ``--gradual-unfreezing`` and a FairseqAWDError for any
    label not in label/dict.txt or beyond ``--num-classes``.

    Unfreezing sets ``requires_grad`` on the model's ``layer_groups()`` in ``begin_epoch``.
    fairseq's trainer builds the optimizer over all parameters before the first epoch
    begins (fairseq_cli/train.py calls ``trainer.get_lr()`` first), and its Adam skips
    parameters without a gradient, so frozen groups just stay as they are. c10d DDP
    refuses parameters that get no gradient: unfreeze with ``--ddp-backend legacy_ddp``.
    """

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        allow_bf16_on_cpu(cfg)
        return super().setup_task(cfg, **kwargs)

    def build_model(self, cfg, from_checkpoint=False):
        name = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
        model_cls = ARCH_MODEL_REGISTRY.get(name) or MODEL_REGISTRY.get(name)
        needed = ["register_classification_head"]
        if self.cfg.gradual_unfreezing:
            needed.append("layer_groups")
        if model_cls is not None and not all(hasattr(model_cls, n) for n in needed):
            raise FairseqAWDError(f"--task awd_sentence_prediction: model {name} has no "
                                  f"{' or '.join(needed)}; use --arch awd_lstm_classifier or "
                                  "awd_qrnn_classifier")
        pretrained = bool(getattr(cfg, "pretrained_lm", None)) and hasattr(model_cls,
                                                                           "copy_lm_sizes")
        if pretrained and from_checkpoint:  # the weights come from the checkpoint
            with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.ExitStack():
                cfg.pretrained_lm = None
        model = super().build_model(cfg, from_checkpoint)
        if pretrained and not from_checkpoint:
            # The checkpoints' config gets the LM's sizes, for the reload above: the model
            # read them from --pretrained-lm into its own config (fairseq hands the model a
            # copy of ``cfg``), so the LM checkpoint is read once.
            with open_dict(cfg) if OmegaConf.is_config(cfg) else contextlib.ExitStack():
                model_cls.copy_lm_sizes(model.cfg, cfg)
        return model

    def load_dataset(self, split, combine=False, **kwargs):
        self.check_binarized(split)
        if not self.cfg.regression_target:
            self.check_labels(split, combine)
        return super().load_dataset(split, combine=combine, **kwargs)

    def check_binarized(self, split: str) -> None:
        """``check_binarized`` on each of the split's inputs and its labels (fairseq's
        sentence_prediction layout: ``input0/``, ``input1/``, ``label/``)."""
        parts = [("input0", self.source_dictionary), ("input1", self.source_dictionary)]
        if not self.cfg.regression_target:
            parts.append(("label", self.label_dictionary))
        for key, dictionary in parts:
            directory = os.path.join(self.cfg.data, key)
            check_binarized(os.path.join(directory, split), dictionary,
                            os.path.join(directory, "dict.txt"),
                            f"--only-source --{split}pref TEXT.{key}")

    def check_labels(self, split: str, combine: bool = False) -> None:
        """Raise FairseqAWDError if a label of ``split`` is ``<unk>`` (not in
        label/dict.txt) or its class index is not below ``--num-classes``."""
        labels = data_utils.load_indexed_dataset(
            os.path.join(self.cfg.data, "label", split), self.label_dictionary, combine=combine
        )
        if labels is None:
            return
        d = self.label_dictionary
        unknown, too_high = [], []
        for i in range(len(labels)):
            label = int(labels[i][0])
            if label == d.unk():
                unknown.append(i)
            elif label - d.nspecial >= self.cfg.num_classes:
                too_high.append(i)
        if unknown:
            raise FairseqAWDError(
                f"{split}: {len(unknown)} examples have a label that is not in label/dict.txt "
                f"(the first is example {unknown[0]}); labels must be among label/dict.txt's: "
                "drop those examples or binarize the labels again with a label/dict.txt "
                "that has them"
            )
        if too_high:
            raise FairseqAWDError(
                f"{split}: {len(too_high)} examples have a label beyond --num-classes "
                f"{self.cfg.num_classes} (the first is example {too_high[0]}); set "
                f"--num-classes to the number of labels in label/dict.txt"
            )

    def begin_epoch(self, epoch: int, model) -> None:
        super().begin_epoch(epoch, model)
        if not self.cfg.gradual_unfreezing:
            return
        groups = model.layer_groups()
        for depth, params in enumerate(groups):
            for p in params:
                p.requires_grad_(depth <= epoch - 1)
        logger.info("gradual unfreezing: epoch %d trains layer depths 0..%d of 0..%d",
                    epoch, min(epoch - 1, len(groups) - 1), len(groups) - 1)
