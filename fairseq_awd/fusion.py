"""Shallow fusion with a recurrent LM that carries its state from step to step.

fairseq 0.12's ``SequenceGenerator`` adds ``lm_weight * log p_LM`` to the translation
model's scores, but calls the LM on the whole prefix ``tokens[:, :step + 1]`` at every step
with no incremental state: an RNN LM then reads ``T (T + 1) / 2`` tokens for a
``T``-token hypothesis. Here the generator is left as it is and two small pieces hook in:

* ``IncrementalLM`` wraps the LM. Called on the whole prefix, it feeds only the last token
  to the LM with an incremental state kept across the steps of one search; a one-token
  prefix (step 0) starts a new search.
* ``FusionEnsembleModel`` is fairseq's ``EnsembleModel`` plus one thing: when the generator
  reorders the decoders' incremental states (beams picked, finished sentences dropped), it
  reorders the LM's state the same way.

``IncrementalFusionSequenceGenerator`` puts the two in place; the ``translation_lm_fusion``
task builds it (see ``fairseq_awd/tasks/translation_lm_fusion.py``).
"""

from typing import Any, Dict, List, Optional

import torch
from fairseq import checkpoint_utils
from fairseq.data import Dictionary
from fairseq.sequence_generator import EnsembleModel, SequenceGenerator
from torch import nn

from fairseq_awd.dictionary_check import check_dictionary, dictionary_fingerprint
from fairseq_awd.errors import FairseqAWDError

IncrementalState = Dict[str, Dict[str, Optional[torch.Tensor]]]


def lm_task_config(checkpoint: str) -> Optional[Any]:
    """The task options saved in the LM checkpoint ``checkpoint`` (None for a checkpoint
    without them). fairseq-generate hands the generator the LM model alone, not the task it
    was trained with, whose ``reverse_tokens`` tells a backward LM; reading them costs one
    more read of the checkpoint file."""
    state = checkpoint_utils.load_checkpoint_to_cpu(checkpoint)
    cfg = state.get("cfg")
    return None if cfg is None else cfg.get("task")


def check_lm_dictionary(lm_model: nn.Module, target_dictionary: Dictionary,
                        target_path: str = "the translation model's target dictionary") -> None:
    """Raise FairseqAWDError unless the LM's dictionary maps words to the same ids as the
    translation model's target dictionary (fusion adds scores id by id)."""
    decoder = getattr(lm_model, "decoder", None)
    lm_dictionary = getattr(decoder, "dictionary", None)
    if lm_dictionary is None:
        raise FairseqAWDError("--lm-path: the language model has no decoder dictionary; "
                              "shallow fusion needs a fairseq language model")
    check_dictionary(
        target_dictionary, len(lm_dictionary), dictionary_fingerprint(lm_dictionary),
        f"--lm-path: the language model's dictionary ({len(lm_dictionary)} types) differs "
        f"from {target_path} ({len(target_dictionary)} types, or the same types in another "
        "order), so fused scores would add up different words; binarize the LM corpus "
        "with fairseq-preprocess --only-source --srcdict set to the translation model's "
        "dict.TGT.txt, train the LM on it, and put that dictionary as dict.txt in the "
        "translation data directory",
    )


class IncrementalLM(nn.Module):
    """A fairseq LM with an incremental decoder, called on whole prefixes, run one token
    per call.

    ``forward(prefix (N, t))`` returns the LM's output for the last position only,
    ``(N, 1, V)``, which is all the generator reads (``probs[:, -1, :]``). Calls must come
    as the generator makes them: a one-token prefix first, then one token longer each time,
    with ``reorder`` between calls whenever the rows change.
    """

    def __init__(self, lm_model: nn.Module):
        super().__init__()
        self.lm_model = lm_model
        self._state: IncrementalState = {}
        self._length = 0  # prefix length the state has read

    def forward(self, prefix: torch.Tensor):
        if prefix.size(1) == 1:  # step 0: a new search
            self._state = {}
        elif prefix.size(1) != self._length + 1:
            raise RuntimeError(f"incremental LM fusion: got a prefix of {prefix.size(1)} tokens "
                               f"after one of {self._length}; expected one token more")
        self._length = prefix.size(1)
        return self.lm_model(prefix, incremental_state=self._state)

    def get_normalized_probs(self, net_output, log_probs: bool, sample=None) -> torch.Tensor:
        return self.lm_model.get_normalized_probs(net_output, log_probs=log_probs, sample=sample)

    def reorder(self, new_order: torch.Tensor) -> None:
        """Keep the rows of the LM's state that ``new_order`` picks, in its order."""
        self.lm_model.decoder.reorder_incremental_state_scripting(self._state, new_order)


class FusionEnsembleModel(EnsembleModel):
    """fairseq's EnsembleModel that also reorders an ``IncrementalLM``'s state."""

    def __init__(self, models: List[nn.Module], lm: IncrementalLM):
        super().__init__(models)
        self.fusion_lm = lm

    def reorder_incremental_state(self, incremental_states: List[IncrementalState],
                                  new_order: torch.Tensor) -> None:
        super().reorder_incremental_state(incremental_states, new_order)
        self.fusion_lm.reorder(new_order)


class IncrementalFusionSequenceGenerator(SequenceGenerator):
    """fairseq's SequenceGenerator whose fusion LM (``lm_model``) runs incrementally.

    Same hypotheses and scores as ``SequenceGenerator`` with the same LM (up to float
    rounding); the LM reads each token once instead of once per later step. Without an LM
    it is exactly ``SequenceGenerator``.
    """

    def __init__(self, models, tgt_dict: Dictionary, lm_model: Optional[nn.Module] = None,
                 **kwargs):
        if lm_model is not None:
            decoder = getattr(lm_model, "decoder", None)
            if not hasattr(decoder, "reorder_incremental_state_scripting"):
                raise FairseqAWDError("incremental LM fusion needs a language model with an "
                                      "incremental decoder; use --task translation instead")
            lm_model = IncrementalLM(lm_model)
            if isinstance(models, EnsembleModel):
                models = list(models.models)
            models = FusionEnsembleModel(models, lm_model)
        super().__init__(models, tgt_dict, lm_model=lm_model, **kwargs)
