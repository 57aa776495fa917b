"""Class probabilities of trained classifiers on a binarized split, and their ensemble.

ULMFiT's bidirectional model (Howard and Ruder 2018, end of section 3.3) averages the
predictions of a forward and a backward classifier:
``p(c | x) = (p_fwd(c | x) + p_bwd(c | x)) / 2``.
Each member is read with its own checkpoint's task and model options, so a backward
classifier (``--reverse-tokens``) reads the same binarized data right to left.

    python -m fairseq_awd.evaluation.classifier_ensemble --path FWD.pt:BWD.pt \\
        --data CLS-BIN --subset test
"""

import argparse
import json
from typing import List, Optional, Sequence, Tuple

import torch
from fairseq import checkpoint_utils

from fairseq_awd.errors import FairseqAWDError, install_excepthook


def average_probabilities(logits: Sequence[torch.Tensor]) -> torch.Tensor:
    """The ensemble's class probabilities ``(N, C)``: the mean over members of
    ``softmax(logits)``, each member's ``logits`` ``(N, C)`` (log-probabilities serve too)."""
    if not logits or any(x.shape != logits[0].shape or x.dim() != 2 for x in logits):
        raise FairseqAWDError("an ensemble needs one or more members' (N, C) scores of one "
                              f"shape, got {[tuple(x.shape) for x in logits]}")
    return torch.stack([x.float().softmax(-1) for x in logits]).mean(0)


def accuracy(scores: torch.Tensor, targets: torch.Tensor) -> float:
    """Percentage of rows of ``scores`` ``(N, C)`` whose argmax is ``targets`` ``(N,)``."""
    return 100.0 * scores.argmax(-1).eq(targets).double().mean().item()


@torch.no_grad()
def split_logits(checkpoint: str, subset: str, data: Optional[str] = None,
                 batch_size: int = 64) -> Tuple[torch.Tensor, torch.Tensor]:
    """``(logits (N, C), targets (N,))`` of the classifier in ``checkpoint`` on every example
    of ``subset``, in example order; ``data`` overrides the binarized data directory the
    checkpoint was trained on."""
    overrides = {"data": data} if data else {}
    try:
        models, cfg, task = checkpoint_utils.load_model_ensemble_and_task(
            [checkpoint], arg_overrides=overrides)
    except (FileNotFoundError, OSError) as err:
        raise FairseqAWDError(f"--path {checkpoint}: {err}") from err
    model = models[0].eval()
    head = getattr(cfg.criterion, "classification_head_name", "sentence_classification_head")
    if head not in getattr(model, "classification_heads", {}):
        raise FairseqAWDError(f"{checkpoint} has no classification head {head!r}: give a "
                              "checkpoint of fairseq-train --task awd_sentence_prediction")
    task.load_dataset(subset)
    dataset = task.dataset(subset)
    batches = task.get_batch_iterator(
        dataset=dataset, max_sentences=batch_size, max_positions=None,
        ignore_invalid_inputs=False, required_batch_size_multiple=1,
    ).next_epoch_itr(shuffle=False)
    ids, logits, targets = [], [], []
    for sample in batches:
        out, _ = model(**sample["net_input"], classification_head_name=head)
        ids.append(sample["id"])
        logits.append(out.float())
        targets.append(sample["target"].view(-1))
    if not ids:
        raise FairseqAWDError(f"'{subset}' of {checkpoint}'s data has no examples")
    order = torch.cat(ids).argsort()
    return torch.cat(logits)[order], torch.cat(targets)[order]


def score_ensemble(checkpoints: Sequence[str], subset: str, data: Optional[str] = None,
                   batch_size: int = 64) -> dict:
    """Accuracy (%) of each member and of their probability average on ``subset``."""
    members = [split_logits(path, subset, data, batch_size) for path in checkpoints]
    targets = members[0][1]
    for path, (_, other) in zip(checkpoints[1:], members[1:]):
        if other.shape != targets.shape or not torch.equal(other, targets):
            raise FairseqAWDError(f"{path} reads other examples or labels of '{subset}' than "
                                  f"{checkpoints[0]}: ensemble classifiers of the same data")

    return {"subset": subset, "examples": len(targets),
            "members": {path: accuracy(logits, targets) for path, (logits, _) in
                        zip(checkpoints, members)},
            "accuracy": accuracy(average_probabilities([logits for logits, _ in members]),
                                 targets)}


def main(argv: Optional[List[str]] = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--path", required=True,
                        help="classifier checkpoints separated by ':' (fairseq's ensemble form)")
    parser.add_argument("--subset", default="test", help="binarized split to score")
    parser.add_argument("--data", help="binarized data directory (default: each checkpoint's)")
    parser.add_argument("--batch-size", type=int, default=64)
    args = parser.parse_args(argv)
    print(json.dumps(score_ensemble(args.path.split(":"), args.subset, args.data,
                                    args.batch_size), indent=1))


if __name__ == "__main__":
    install_excepthook()
    main()
