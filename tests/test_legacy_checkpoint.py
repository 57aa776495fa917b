"""Checkpoints written by earlier versions load (strictly) and score exactly as they did.

``tests/fixtures/legacy_checkpoint`` holds three tiny checkpoints trained with the code of
the commit named in its ``expected.json``, together with what that code computed on them
(see the fixture's README): an AWD-LSTM LM (tied full softmax), an AWD-QRNN LM (untied,
adaptive softmax) and an AWD-LSTM classifier fine-tuned from the LSTM LM. The shared
``ptb-small`` checkpoint is checked the same way when it is present.
"""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils
from fairseq_cli_helpers import SHARED, USER_DIR, one_thread_env

pytestmark = pytest.mark.e2e  # runs fairseq's or the plugin's commands

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "legacy_checkpoint"
EXPECTED = json.loads((FIXTURE / "expected.json").read_text(encoding="utf-8"))
PTB_SMALL = SHARED / "checkpoints" / "ptb-small"

# fairseq-eval-lm's own steps (its parser, config and main) with its results printed at
# full precision as the last line; fairseq-eval-lm itself logs them to 4 decimals only.
EVAL_LM = """
import json
from fairseq import options
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli.eval_lm import main
args = options.parse_args_and_arch(options.get_eval_lm_parser())
results = main(convert_namespace_to_omegaconf(args))
print(json.dumps({k: float(v) for k, v in results.items()}))
"""


def eval_lm(data: Path, checkpoint: Path, *extra: str):
    """``(exact results {"loss", "perplexity"}, logged output)`` of fairseq-eval-lm on the
    valid split (the checkpoint loads with strict=True, as fairseq-eval-lm loads it)."""
    proc = subprocess.run(
        [sys.executable, "-c", EVAL_LM, str(data), "--user-dir", USER_DIR, "--task",
         "awd_language_modeling", "--cpu", "--path", str(checkpoint), "--gen-subset", "valid",
         *extra],
        capture_output=True, text=True, env=one_thread_env(), timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1]), proc.stdout + proc.stderr


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_legacy_lm_checkpoint_evaluates_as_before(kind):
    expected = EXPECTED[kind]["eval_lm"]
    results, output = eval_lm(FIXTURE / "data", FIXTURE / kind / "checkpoint.pt",
                              "--valid-batch-size", "4")
    assert results["loss"] == pytest.approx(expected["exact"]["loss"], rel=1e-6)
    assert results["perplexity"] == pytest.approx(expected["exact"]["perplexity"], rel=1e-6)
    assert f"Evaluated {expected['tokens']} tokens" in output
    assert (f"Loss (base 2): {expected['loss_base2']}, Perplexity: {expected['perplexity']}"
            in output)


@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_legacy_lm_checkpoint_scores_as_before_through_the_hub(kind):
    from fairseq_awd import from_pretrained

    lm = from_pretrained(str(FIXTURE / kind), str(FIXTURE / "data"), "checkpoint.pt")
    for sentence, expected in zip(EXPECTED["sentences"],
                                  EXPECTED[kind]["hub_positional_scores"]):
        scores = lm.score(sentence)["positional_scores"]
        torch.testing.assert_close(scores, torch.tensor(expected), rtol=0, atol=1e-5)


def test_legacy_classifier_checkpoint_predicts_as_before():
    [model], _, task = checkpoint_utils.load_model_ensemble_and_task(
        [str(FIXTURE / "classifier" / "checkpoint.pt")],
        arg_overrides={"data": str(FIXTURE / "classifier_data")},
    )
    model.eval()
    d = task.source_dictionary
    rows = [d.encode_line(s, add_if_not_exist=False).long() for s in EXPECTED["sentences"]]
    tokens = torch.full((len(rows), max(len(r) for r in rows)), d.pad(), dtype=torch.long)
    for i, row in enumerate(rows):
        tokens[i, : len(row)] = row  # right-padded
    with torch.no_grad():
        logits, _ = model(tokens, classification_head_name="sentence_classification_head")
    torch.testing.assert_close(logits, torch.tensor(EXPECTED["classifier"]["logits"]),
                               rtol=0, atol=1e-5)


@pytest.mark.skipif(not (PTB_SMALL / "checkpoint_best.pt").exists(),
                    reason=f"no ptb-small checkpoint at {PTB_SMALL}")
def test_ptb_small_evaluates_as_before():
    """Valid perplexity 108.48 on 10 streams (its README; measured at full precision with
    the code of expected.json's commit). About 20 s on one CPU thread."""
    results, output = eval_lm(PTB_SMALL / "data-bin", PTB_SMALL / "checkpoint_best.pt")
    expected = EXPECTED["ptb_small_valid"]
    assert results["loss"] == pytest.approx(expected["loss"], rel=1e-6)
    assert results["perplexity"] == pytest.approx(expected["perplexity"], rel=1e-6)
    assert "Perplexity: 108.48" in output
