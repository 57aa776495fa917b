"""``--task translation_lm_fusion``: fairseq's translation task whose generator fuses the
``--lm-path`` language model incrementally (see ``fairseq_awd.fusion``).

fairseq-generate's ``--bf16`` (with ``--cpu`` on the CPU) runs the translation model(s) and
the LM in bf16, their log-probabilities and the beam's scores in float32
(``fairseq_awd.bf16_scoring``)."""

import os

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_awd.bf16_scoring import bf16_requested, cast_for_bf16_scoring
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.fusion import (
    IncrementalFusionSequenceGenerator,
    check_lm_dictionary,
    lm_task_config,
)
from fairseq_awd.grid import check_finite
from fairseq_awd.rescoring.lm_scorer import check_forward_lm
from fairseq_awd.tasks.cpu_bf16 import allow_bf16_on_cpu

# fairseq's generation options that weigh the terms of a hypothesis' score, with their
# defaults: a NaN or infinite one decides every comparison of the beam search
FUSED_WEIGHTS = {"lm_weight": 1.0, "lenpen": 1.0, "unkpen": 0.0}


@register_task("translation_lm_fusion", dataclass=TranslationConfig)
class TranslationLMFusionTask(TranslationTask):
    """Translation with shallow fusion that carries the LM's recurrent state: the same
    hypotheses and scores as ``--task translation --lm-path LM --lm-weight W``, with the LM
    reading each target token once (O(T) per hypothesis instead of O(T^2)).

    Refused with FairseqAWDError: an LM whose dictionary is not the translation model's
    target dictionary, a backward LM (trained with ``--reverse-tokens``, as the rescorer
    refuses it), and a ``--lm-weight``, ``--lenpen`` or ``--unkpen`` that is NaN or infinite.
    """

    @classmethod
    def setup_task(cls, cfg, **kwargs):
        allow_bf16_on_cpu(cfg)  # --bf16 --cpu: the --tpu that fairseq's --bf16 implies, off
        return super().setup_task(cfg, **kwargs)

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        for option, default in FUSED_WEIGHTS.items():
            value, flag = getattr(args, option, None), f"--{option.replace('_', '-')}"
            if value is not None:
                check_finite(value, flag, f"give a finite number, e.g. {flag} {default:g}")
        lm_model = (extra_gen_cls_kwargs or {}).get("lm_model")
        if lm_model is not None and seq_gen_cls is None:
            if getattr(args, "lm_path", None):
                check_forward_lm(lm_task_config(args.lm_path), f"--lm-path {args.lm_path}")
            data = self.cfg.data.split(os.pathsep)[0]
            target = f"{data}/dict.{self.cfg.target_lang or 'TGT'}.txt"
            check_lm_dictionary(lm_model, self.target_dictionary, f"the target dictionary {target}")
            if getattr(args, "print_alignment", None):
                raise FairseqAWDError("--print-alignment is not supported with incremental LM "
                                      "fusion; use --task translation for it")
            seq_gen_cls = IncrementalFusionSequenceGenerator
        if bf16_requested(self.cfg):  # fairseq-generate's --bf16
            for model in [*models, *([lm_model] if lm_model is not None else [])]:
                cast_for_bf16_scoring(model, type(model).__name__)
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs,
                                       prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
