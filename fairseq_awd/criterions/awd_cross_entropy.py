"""Cross entropy plus AWD-LSTM's activation regularizers (Merity et al. 2017, section 4.6)."""

import math
from dataclasses import dataclass, field

import torch.nn.functional as F
from fairseq import metrics, utils
from fairseq.criterions import FairseqCriterion, register_criterion
from fairseq.dataclass import FairseqDataclass

from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.models.awd_rnn import AWDRNNDecoder
from fairseq_awd.modules import activation_regularization, temporal_activation_regularization


@dataclass
class AWDCrossEntropyConfig(FairseqDataclass):
    alpha: float = field(
        default=2.0,
        metadata={"help": "activation regularization (AR) weight on the dropped last-layer output"},
    )
    beta: float = field(
        default=1.0,
        metadata={"help": "temporal activation regularization (TAR) weight on the undropped "
                  "last-layer output"},
    )


@register_criterion("awd_cross_entropy", dataclass=AWDCrossEntropyConfig)
class AWDCrossEntropyCriterion(FairseqCriterion):
    """``loss = sum NLL + ntokens * (AR + TAR)``, so that ``loss / ntokens`` is the
    reference's per-token ``NLL + AR + TAR``.

    AR and TAR are added only in training and only for models whose decoder output
    carries ``raw_output``/``dropped_output`` (AWD models); ``nll_loss``, from which
    perplexity is computed, is logged separately and never includes them.

    For an AWD model the NLL is the decoder's ``output_nll``, its output head's ``nll``:
    with an adaptive softmax (``AdaptiveSoftmaxHead``) only the head and, per tail cluster,
    the positions whose target falls in it are computed; with a mixture of softmaxes
    (``MixtureOfSoftmaxesHead``) only each component's normalizer and target logit: no
    ``(B, T, V)`` log-probabilities.
    """

    def __init__(self, task, alpha: float, beta: float):
        super().__init__(task)
        for option, weight, term in (("--alpha", alpha, "AR"), ("--beta", beta, "TAR")):
            if not weight >= 0:  # NaN too
                raise FairseqAWDError(f"{option} must be non-negative (0 turns {term} off), "
                                      f"got {weight}")
        self.alpha = alpha
        self.beta = beta

    def forward(self, model, sample, reduce=True):
        net_output = model(**sample["net_input"])
        output, extra = net_output[0], net_output[1]
        target = model.get_targets(sample, net_output)
        decoder = getattr(model, "decoder", None)
        if isinstance(decoder, AWDRNNDecoder):  # any output head
            nll = decoder.output_nll(net_output, target, ignore_index=self.padding_idx).sum()
        else:
            nll = F.cross_entropy(
                output.reshape(-1, output.size(-1)).float(),
                target.reshape(-1),
                ignore_index=self.padding_idx,
                reduction="sum",
            )
        ntokens = sample["ntokens"]
        loss = nll
        logging_output = {
            "nll_loss": nll.data,
            "ntokens": ntokens,
            "nsentences": sample["nsentences"],
            "sample_size": ntokens,
        }
        if model.training and isinstance(extra, dict) and "raw_output" in extra:
            ar = activation_regularization(extra["dropped_output"], self.alpha)
            tar = temporal_activation_regularization(extra["raw_output"], self.beta)
            loss = nll + (ar + tar) * ntokens
            logging_output["ar"] = ar.data * ntokens
            logging_output["tar"] = tar.data * ntokens
        logging_output["loss"] = loss.data
        return loss, ntokens, logging_output

    @staticmethod
    def reduce_metrics(logging_outputs) -> None:
        def total(key):
            return sum(log.get(key, 0) for log in logging_outputs)

        ntokens = total("ntokens")
        if ntokens == 0:
            return
        metrics.log_scalar("loss", total("loss") / ntokens / math.log(2), ntokens, round=3)
        metrics.log_scalar("nll_loss", total("nll_loss") / ntokens / math.log(2), ntokens, round=3)
        if any("ar" in log for log in logging_outputs):
            metrics.log_scalar("ar", total("ar") / ntokens, ntokens, round=4)
            metrics.log_scalar("tar", total("tar") / ntokens, ntokens, round=4)
        metrics.log_derived("ppl", lambda meters: utils.get_perplexity(meters["nll_loss"].avg))

    @staticmethod
    def logging_outputs_can_be_summed() -> bool:
        return True
