"""``--task translation_lm_fusion``: fairseq's translation task whose generator fuses the
``--lm-path`` language model incrementally (see ``fairseq_awd.fusion``)."""

import os

from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.fusion import IncrementalFusionSequenceGenerator, check_lm_dictionary


@register_task("translation_lm_fusion", dataclass=TranslationConfig)
class TranslationLMFusionTask(TranslationTask):
    """Translation with shallow fusion that carries the LM's recurrent state: the same
    hypotheses and scores as ``--task translation --lm-path LM --lm-weight W``, with the LM
    reading each target token once (O(T) per hypothesis instead of O(T^2)).

    The LM's dictionary must be the translation model's target dictionary; a different
    one is refused (FairseqAWDError).
    """

    def build_generator(self, models, args, seq_gen_cls=None, extra_gen_cls_kwargs=None,
                        prefix_allowed_tokens_fn=None):
        lm_model = (extra_gen_cls_kwargs or {}).get("lm_model")
        if lm_model is not None and seq_gen_cls is None:
            data = self.cfg.data.split(os.pathsep)[0]
            target = f"{data}/dict.{self.cfg.target_lang or 'TGT'}.txt"
            check_lm_dictionary(lm_model, self.target_dictionary, f"the target dictionary {target}")
            if getattr(args, "print_alignment", None):
                raise FairseqAWDError("--print-alignment is not supported with incremental LM "
                                      "fusion; use --task translation for it")
            seq_gen_cls = IncrementalFusionSequenceGenerator
        return super().build_generator(models, args, seq_gen_cls=seq_gen_cls,
                                       extra_gen_cls_kwargs=extra_gen_cls_kwargs,
                                       prefix_allowed_tokens_fn=prefix_allowed_tokens_fn)
