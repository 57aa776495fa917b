"""ULMFiT's backward models and bidirectional ensemble, early stopping on held-out accuracy,
and the labelled-text reader: the reversed LM streams, the classifier that reads right to
left, the probability average, the kept checkpoint, and every malformed input line."""

import math
import shutil

import pytest
import torch
from fairseq import options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli_helpers import (
    USER_DIR,
    assert_one_line_error,
    binarize,
    json_logs,
    real_text_lines,
    run,
    train,
)
from test_classifier import CLASSIFY, TINY, binarize_classification, build, length_label

from fairseq_awd.data.labelled_text import check_labels_seen, read_labelled
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.evaluation.classifier_ensemble import (
    average_probabilities,
    score_ensemble,
    split_logits,
)
from fairseq_awd.modules import reverse_padded
from fairseq_awd.rescoring.lm_scorer import load_lm


@pytest.fixture(scope="module")
def lm_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("ulmfit")
    return binarize(root / "bin", {"train": real_text_lines("train", 300),
                                   "valid": real_text_lines("valid", 40)})


@pytest.fixture(scope="module")
def backward_lm(lm_data, tmp_path_factory):
    save = tmp_path_factory.mktemp("backward-lm")
    train(lm_data, save, ["--reverse-tokens", "--max-update", "3", "--no-epoch-checkpoints"])
    return save / "checkpoint_last.pt"


@pytest.fixture(scope="module")
def cls_data(lm_data, tmp_path_factory):
    texts = {"train": real_text_lines("train", 200), "valid": real_text_lines("valid", 60)}
    labels = {split: [length_label(line) for line in lines] for split, lines in texts.items()}
    return binarize_classification(tmp_path_factory.mktemp("cls") / "bin", texts, labels,
                                   lm_data / "dict.txt")


# the backward LM's streams


def lm_task(data, *extra):
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling",
        "--arch", "awd_lstm_lm", "--batch-size", "1", "--bptt", "9", "--fixed-bptt", *extra])
    return tasks.setup_task(convert_namespace_to_omegaconf(args).task)


def stream_batches(task):
    task.load_dataset("train")
    batches = task.get_batch_iterator(task.dataset("train")).next_epoch_itr(shuffle=False)
    samples = list(batches)
    inputs = torch.cat([s["net_input"]["src_tokens"].view(-1) for s in samples])
    targets = torch.cat([s["target"].view(-1) for s in samples])
    return inputs, targets


@pytest.mark.e2e
def test_reversed_stream_is_the_forward_stream_reversed(lm_data):
    forward_inputs, forward_targets = stream_batches(lm_task(lm_data))
    backward_inputs, backward_targets = stream_batches(lm_task(lm_data, "--reverse-tokens"))
    # one stream: the forward batches read tokens t_0 .. t_{N-1}, inputs t_0..t_{N-2}
    tokens = torch.cat([forward_inputs, forward_targets[-1:]])
    assert torch.equal(forward_targets, tokens[1:])
    assert torch.equal(backward_inputs, tokens.flip(0)[:-1])
    assert torch.equal(backward_targets, tokens.flip(0)[1:])
    assert not torch.equal(backward_inputs, forward_inputs)


@pytest.mark.e2e
def test_backward_lm_direction_is_saved_and_checked(backward_lm, lm_data, cls_data, tmp_path):
    from fairseq_awd.models.awd_rnn_classifier import load_lm_checkpoint

    assert load_lm_checkpoint(str(backward_lm), "awd_lstm_lm")[2] is True
    common = [str(cls_data), "--task", "awd_sentence_prediction", *CLASSIFY,
              "--pretrained-lm", str(backward_lm), "--max-update", "1", "--no-save"]
    assert_one_line_error(run("train", common, check=False),
                          "is a backward LM", "add --reverse-tokens")
    run("train", common + ["--reverse-tokens"])  # matching directions train
    with pytest.raises(FairseqAWDError, match="backward LM"):
        load_lm(str(backward_lm), str(lm_data))


# the backward classifier


def test_reverse_padded_by_hand():
    pad = 1
    tokens = torch.tensor([[5, 6, 7, 2], [8, 2, pad, pad], [9, pad, pad, pad]])
    expected = torch.tensor([[2, 7, 6, 5], [2, 8, pad, pad], [9, pad, pad, pad]])
    assert torch.equal(reverse_padded(tokens, tokens.eq(pad)), expected)


@pytest.mark.e2e
def test_backward_classifier_reads_each_sentence_reversed(cls_data):
    _, backward, _ = build(cls_data, [*TINY, "--reverse-tokens"], task="awd_sentence_prediction")
    _, forward, _ = build(cls_data, TINY, task="awd_sentence_prediction")
    for model in (backward, forward):
        model.register_classification_head("head", num_classes=2)
    forward.load_state_dict(backward.state_dict())
    backward.eval(), forward.eval()
    pad = backward.dictionary.pad()
    sentences = [torch.tensor([10, 11, 12, 13, 2]), torch.tensor([14, 15, 2])]
    batch = torch.nn.utils.rnn.pad_sequence(sentences, batch_first=True, padding_value=pad)
    reversed_by_hand = torch.nn.utils.rnn.pad_sequence(
        [s.flip(0) for s in sentences], batch_first=True, padding_value=pad)
    with torch.no_grad():
        logits, _ = backward(batch, classification_head_name="head")
        expected, _ = forward(reversed_by_hand, classification_head_name="head")
        alone, _ = backward(sentences[1][None], classification_head_name="head")
    assert torch.allclose(logits, expected, atol=1e-6)
    # padding never enters: the short sentence scores the same alone as beside a longer one
    assert torch.allclose(logits[1], alone[0], atol=1e-6)
    assert not torch.allclose(logits, forward(batch, classification_head_name="head")[0])


# the ensemble


def test_ensemble_averages_probabilities_by_hand():
    third = math.log(3.0)
    a = torch.tensor([[0.0, third], [0.0, 0.0]])  # softmax: (1/4, 3/4), (1/2, 1/2)
    b = torch.tensor([[third, 0.0], [math.log(0.2), math.log(0.8)]])  # (3/4, 1/4), (.2, .8)
    expected = torch.tensor([[0.5, 0.5], [0.35, 0.65]])
    assert torch.allclose(average_probabilities([a, b]), expected, atol=1e-6)
    assert torch.allclose(average_probabilities([a]), a.softmax(-1))
    with pytest.raises(FairseqAWDError, match="one shape"):
        average_probabilities([a, b[:1]])


# early stopping and the kept checkpoint


@pytest.fixture(scope="module")
def stopped_early(cls_data, backward_lm, tmp_path_factory):
    """A forward classifier from scratch and a backward one from the backward LM, each
    trained with --patience 1 for at most 12 epochs; ``{name: (save dir, logs)}``."""
    runs = {}
    for name, extra in (("forward", []), ("backward", ["--pretrained-lm", str(backward_lm),
                                                        "--reverse-tokens"])):
        save = tmp_path_factory.mktemp(name)
        proc = run("train", [str(cls_data), "--task", "awd_sentence_prediction", *CLASSIFY,
                             *TINY, *extra, "--max-epoch", "12", "--patience", "1",
                             "--best-checkpoint-metric", "accuracy",
                             "--maximize-best-checkpoint-metric", "--no-epoch-checkpoints",
                             "--save-dir", str(save)])
        runs[name] = (save, json_logs(proc.stdout + proc.stderr, "valid"))
    return runs


@pytest.mark.e2e
def test_early_stopping_keeps_the_best_held_out_checkpoint(stopped_early):
    save, valid = stopped_early["forward"]
    accuracy = [float(r["valid_accuracy"]) for r in valid]
    # training stops at the first epoch that does not beat the best so far (patience 1)
    expected_epochs = next((e + 1 for e in range(1, len(accuracy))
                            if accuracy[e] <= max(accuracy[:e])), 12)
    assert len(accuracy) == expected_epochs
    best = score_ensemble([str(save / "checkpoint_best.pt")], "valid")["accuracy"]
    assert best == pytest.approx(max(accuracy), abs=0.05)  # fairseq logs 1 decimal


@pytest.mark.e2e
def test_ensemble_of_forward_and_backward_classifiers(stopped_early):
    paths = [str(stopped_early[name][0] / "checkpoint_best.pt") for name in ("forward",
                                                                              "backward")]
    result = score_ensemble(paths, "valid")
    (fwd, targets), (bwd, _) = (split_logits(path, "valid") for path in paths)
    by_hand = (fwd.softmax(-1) + bwd.softmax(-1)) / 2
    assert result["examples"] == 60 == len(targets)
    assert result["accuracy"] == pytest.approx(
        100.0 * by_hand.argmax(-1).eq(targets).double().mean().item())
    assert list(result["members"]) == paths


# the labelled-text reader


def write(path, text):
    path.write_bytes(text if isinstance(text, bytes) else text.encode("utf-8"))
    return path


def test_read_labelled_tsv_and_trec(tmp_path):
    tsv = write(tmp_path / "a.tsv", "pos\tgood  film .\nneg\tbad\t film\r\n")
    assert [tuple(x) for x in read_labelled(tsv, "tsv")] == [("pos", "good film .", 1),
                                                            ("neg", "bad film", 2)]
    trec = write(tmp_path / "a.label", "DESC:manner How did it go ?\nNUM:dist How far ?\n")
    assert [(x.label, x.text) for x in read_labelled(trec, "trec")] == [
        ("DESC", "How did it go ?"), ("NUM", "How far ?")]


@pytest.mark.parametrize("content, fmt, message", [
    ("pos\tfine\nno tab here\n", "tsv", "bad.txt:2: no tab"),
    ("pos\tfine\nneg\t  \n", "tsv", "bad.txt:2: empty text"),
    ("pos\tfine\n\nneg\tok\n", "tsv", "bad.txt:2: empty line"),
    ("\tno label\n", "tsv", "bad.txt:1: empty label"),
    ("DESC:manner How ?\nHow far ?\n", "trec", "bad.txt:2: no 'COARSE:fine' label"),
    ("NUM:dist\n", "trec", "bad.txt:1: empty text"),
    (b"pos\tfine\nneg\tna\xefve\n", "tsv", "bad.txt:2: not UTF-8"),
    ("", "tsv", "no examples"),
])
def test_read_labelled_names_the_malformed_line(tmp_path, content, fmt, message):
    with pytest.raises(FairseqAWDError, match=message):
        read_labelled(write(tmp_path / "bad.txt", content), fmt)


def test_a_label_never_seen_in_train_is_named(tmp_path):
    train = read_labelled(write(tmp_path / "train.tsv", "pos\ta\nneg\tb\n"))
    test = read_labelled(write(tmp_path / "test.tsv", "pos\tc\nneutral\td\n"))
    with pytest.raises(FairseqAWDError, match=r"test.tsv:2: label 'neutral' never occurs"):
        check_labels_seen(train, test, tmp_path / "test.tsv", tmp_path / "train.tsv")
    check_labels_seen(train, test[:1], tmp_path / "test.tsv", tmp_path / "train.tsv")


def test_missing_file_and_bad_format(tmp_path):
    with pytest.raises(FairseqAWDError, match="no such file"):
        read_labelled(tmp_path / "absent.tsv")
    with pytest.raises(FairseqAWDError, match="--format csv"):
        read_labelled(write(tmp_path / "a.tsv", "pos\ta\n"), "csv")


@pytest.mark.e2e
def test_members_that_read_other_labels_are_refused(stopped_early, cls_data, tmp_path):
    other = tmp_path / "other"  # the same sentences, every held-out label flipped
    shutil.copytree(cls_data, other)
    labels = [("short\n" if length_label(line) == "long\n" else "long\n")
              for line in real_text_lines("valid", 60)]
    binarize(tmp_path / "label", {"valid": labels}, other / "label" / "dict.txt")
    for suffix in ("bin", "idx"):
        shutil.copy(tmp_path / "label" / f"valid.{suffix}", other / "label" / f"valid.{suffix}")
    fwd = stopped_early["forward"][0] / "checkpoint_best.pt"
    state = torch.load(fwd, weights_only=False)
    state["cfg"]["task"]["data"] = str(other)
    torch.save(state, tmp_path / "other.pt")
    assert score_ensemble([str(fwd), str(fwd)], "valid")["examples"] == 60
    with pytest.raises(FairseqAWDError, match="other examples or labels"):
        score_ensemble([str(fwd), str(tmp_path / "other.pt")], "valid")
