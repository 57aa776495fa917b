"""ULMFiT text classification (Howard and Ruder 2018) with the AWD encoders: concat pooling,
the classifier models and their --pretrained-lm loading, discriminative learning rates,
gradual unfreezing, bad input, and training on TREC."""

import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from fairseq import checkpoint_utils, optim, options, tasks
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli_helpers import (
    SHARED_DATA,
    USER_DIR,
    assert_one_line_error,
    binarize,
    json_logs,
    load_model_state,
    real_text_lines,
    run,
    train,
)

from fairseq_awd.modules import AWDEncoder, concat_pool
from fairseq_awd.optim.discriminative_adam import layer_depth_of

TINY = ["--decoder-embed-dim", "24", "--decoder-hidden-size", "40", "--decoder-layers", "2"]
CLASSIFY = [
    "--user-dir", USER_DIR, "--criterion", "sentence_prediction", "--num-classes", "2",
    "--batch-size", "16", "--required-batch-size-multiple", "1", "--optimizer",
    "discriminative_adam", "--lr", "0.01", "--seed", "3", "--cpu", "--no-progress-bar",
    "--log-format", "json", "--log-interval", "1000", "--arch", "awd_lstm_classifier",
]
TREC = SHARED_DATA / "trec" / "train_5500.label"
LEGACY = Path(__file__).resolve().parent / "fixtures" / "legacy_checkpoint"


def length_label(line: str) -> str:
    return "long\n" if len(line.split()) >= 20 else "short\n"


def binarize_classification(dest, texts: dict, labels: dict, srcdict=None):
    """``dest/input0`` (with ``srcdict``) and ``dest/label`` (its own dict.txt)."""
    binarize(dest / "input0", texts, srcdict)
    binarize(dest / "label", labels)
    return dest


@pytest.fixture(scope="module")
def lms(tmp_path_factory):
    """A tiny AWD-LSTM and AWD-QRNN LM, 3 updates each on real text; their data dir."""
    root = tmp_path_factory.mktemp("lm")
    data = binarize(root / "bin", {"train": real_text_lines("train", 400),
                                   "valid": real_text_lines("valid", 40)})
    paths = {}
    for arch in ("awd_lstm_lm", "awd_qrnn_lm"):
        train(data, root / arch, ["--arch", arch, "--max-update", "3", "--no-epoch-checkpoints"])
        paths[arch] = root / arch / "checkpoint_last.pt"
    return data, paths


@pytest.fixture(scope="module")
def classification(lms, tmp_path_factory):
    """Sentences labelled long/short, binarized with the LM's dict.txt."""
    lm_data, _ = lms
    texts = {"train": real_text_lines("train", 200), "valid": real_text_lines("valid", 60)}
    labels = {split: [length_label(line) for line in lines] for split, lines in texts.items()}
    return binarize_classification(tmp_path_factory.mktemp("cls") / "bin", texts, labels,
                                   lm_data / "dict.txt")


def build(data, extra, task="sentence_prediction"):
    """``(task, model)`` built in-process from fairseq-train options."""
    args = options.parse_args_and_arch(options.get_training_parser(),
                                       [str(data), "--task", task, *CLASSIFY, *extra])
    cfg = convert_namespace_to_omegaconf(args)
    task = tasks.setup_task(cfg.task)
    return task, task.build_model(cfg.model), cfg


def lm_weights(path):
    """The entries of the LM decoder's encoder (``decoder.encoder.*``), without the prefix."""
    prefix = "decoder.encoder."
    return {k[len(prefix):]: v for k, v in load_model_state(path)["model"].items()
            if k.startswith(prefix)}


def assert_encoder_is_lm(encoder_state, lm, layers=("layers.0", "layers.1", "embed_tokens")):
    """The named parts of the encoder equal the LM's (embedding: the LM's rows)."""
    for key, value in lm.items():
        if key == "dictionary_fingerprint":
            continue
        if key.startswith(layers):
            assert torch.equal(encoder_state[key][: value.size(0)], value), key


# concat pooling


def test_concat_pool_matches_hand_computation():
    # T = 3, B = 2, C = 2; the second sequence has 2 steps and garbage at the pad.
    outputs = torch.tensor([[[1.0, -2.0], [4.0, 0.0]],
                            [[3.0, 5.0], [-1.0, 2.0]],
                            [[2.0, -1.0], [99.0, 99.0]]])
    mask = torch.tensor([[False, False, False], [False, False, True]])
    expected = torch.tensor([[2.0, -1.0, 3.0, 5.0, 2.0, 2.0 / 3],
                             [-1.0, 2.0, 4.0, 2.0, 1.5, 1.0]])
    torch.testing.assert_close(concat_pool(outputs, mask), expected)


def test_concat_pool_ignores_padding_and_finds_last_from_the_mask():
    torch.manual_seed(0)
    lengths, T, C = [5, 2, 3], 5, 4
    outputs = torch.randn(T, len(lengths), C)
    mask = torch.arange(T).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    outputs[mask.t()] = float("nan")
    pooled = concat_pool(outputs, mask)
    for b, n in enumerate(lengths):
        alone = concat_pool(outputs[:n, b:b + 1], torch.zeros(1, n, dtype=torch.bool))
        torch.testing.assert_close(pooled[b:b + 1], alone)
    left = concat_pool(outputs.flip(0), mask.flip(1))  # left padding: last = last valid step
    torch.testing.assert_close(left[:, :C], outputs[0])


@pytest.mark.e2e
def test_classifier_logits_same_alone_and_padded(classification, lms):
    task, model, _ = build(classification, [*TINY, "--pretrained-lm",
                                            str(lms[1]["awd_lstm_lm"])])
    model.eval()
    pad, eos = task.source_dictionary.pad(), task.source_dictionary.eos()
    torch.manual_seed(1)
    seqs = [torch.cat([torch.randint(4, 200, (n,)), torch.tensor([eos])]) for n in (7, 2, 4)]
    batch = torch.full((3, 8), pad)
    for i, seq in enumerate(seqs):
        batch[i, : len(seq)] = seq
    head = "sentence_classification_head"
    with torch.no_grad():
        logits, _ = model(batch, classification_head_name=head)
        for i, seq in enumerate(seqs):
            alone, _ = model(seq.unsqueeze(0), classification_head_name=head)
            torch.testing.assert_close(logits[i:i + 1], alone, rtol=0, atol=1e-5)
    assert logits.shape == (3, 2)


# --pretrained-lm


@pytest.mark.e2e
@pytest.mark.parametrize("kind", ["lstm", "qrnn"])
def test_pretrained_lm_weights_arrive(classification, lms, kind):
    lm_path = lms[1][f"awd_{kind}_lm"]
    # The command line's sizes (the defaults, 400 units) give way to the LM's.
    task, model, _ = build(classification, ["--arch", f"awd_{kind}_classifier",
                                            "--pretrained-lm", str(lm_path)])
    lm = lm_weights(lm_path)
    state = model.encoder.state_dict()
    assert set(state) == set(lm)
    assert_encoder_is_lm(state, lm)
    assert len(task.source_dictionary) == lm["embed_tokens.weight"].size(0) + 1  # + <mask>
    assert not torch.equal(state["embed_tokens.weight"][-1], torch.zeros(24))  # its own init
    assert list(model.parameters()) and all(
        layer_depth_of(p) is not None for p in model.parameters())


def test_pretrained_lm_of_the_earlier_layout():
    """An LM checkpoint written when the decoder was the encoder (keys ``decoder.embed_tokens.
    weight``, ``decoder.layers.*``) still initializes the classifier's encoder."""
    legacy = LEGACY / "lstm" / "checkpoint.pt"
    old = load_model_state(legacy)["model"]
    assert "decoder.embed_tokens.weight" in old  # the earlier layout
    _, model, _ = build(LEGACY / "classifier_data", ["--pretrained-lm", str(legacy)],
                        task="awd_sentence_prediction")
    state = model.encoder.state_dict()
    lm = {k[len("decoder."):]: v for k, v in old.items()
          if k.startswith(("decoder.embed_tokens", "decoder.layers"))}
    assert set(lm) < set(state)
    for key, value in lm.items():
        assert torch.equal(state[key][: value.size(0)], value), key


@pytest.mark.e2e
@pytest.mark.parametrize("task", ["sentence_prediction", "awd_sentence_prediction"])
def test_pretrained_lm_read_once_and_no_output_layer(classification, lms, task, monkeypatch):
    """The LM checkpoint is read once (with either task), and the encoder is a plain
    AWDEncoder: no output layer is built."""
    lm_path = str(lms[1]["awd_lstm_lm"])
    reads, read = [], checkpoint_utils.load_checkpoint_to_cpu

    def counting_read(path, *args, **kwargs):
        reads.append(path)
        return read(path, *args, **kwargs)

    monkeypatch.setattr(checkpoint_utils, "load_checkpoint_to_cpu", counting_read)
    _, model, cfg = build(classification, ["--pretrained-lm", lm_path], task=task)
    assert reads == [lm_path]
    assert type(model.encoder) is AWDEncoder
    assert not [k for k in model.state_dict() if k.startswith(("encoder.output",
                                                               "encoder.adaptive"))]
    if task == "awd_sentence_prediction":  # the checkpoints' config gets the LM's sizes
        assert cfg.model.decoder_embed_dim == 24 and cfg.model.decoder_layers == 2


@pytest.mark.e2e
def test_fairseq_sentence_prediction_trains_and_reloads(classification, lms, tmp_path):
    """fairseq's own task and criterion drive the classifier; the checkpoint (with its
    head) reloads into an equal model."""
    proc = run("train", [str(classification), "--task", "sentence_prediction", *CLASSIFY,
                         "--pretrained-lm", str(lms[1]["awd_lstm_lm"]), "--max-update", "2",
                         "--save-dir", str(tmp_path)])
    assert "valid_accuracy" in json_logs(proc.stdout + proc.stderr, "valid")[-1]
    models, _ = checkpoint_utils.load_model_ensemble([str(tmp_path / "checkpoint_last.pt")])
    saved = load_model_state(tmp_path / "checkpoint_last.pt")["model"]
    for key, value in models[0].state_dict().items():
        assert torch.equal(value, saved[key]), key
    assert models[0].classification_heads["sentence_classification_head"].num_classes == 2


# discriminative learning rates


@pytest.mark.e2e
def test_discriminative_rates_per_layer_group(classification):
    _, model, cfg = build(classification, [*TINY, "--discriminative-lr-factor", "2.6"])
    untagged = torch.nn.Parameter(torch.zeros(1))
    optimizer = optim.build_optimizer(cfg.optimizer, [*model.parameters(), untagged])
    groups = optimizer.param_groups
    expected = model.layer_groups()  # head, layers.1, layers.0, embedding
    assert len(expected) == 4 and [g["layer_depth"] for g in groups] == [0, 1, 2, 3]
    assert {id(p) for p in groups[0]["params"]} == {id(p) for p in expected[0]} | {id(untagged)}
    for depth in (1, 2, 3):
        assert [id(p) for p in groups[depth]["params"]] == [id(p) for p in expected[depth]]
    assert groups[3]["params"] == [model.encoder.embed_tokens.weight]
    for lr in (0.01, 0.004):
        if lr != 0.01:
            optimizer.set_lr(lr)
        assert [g["lr"] for g in groups] == pytest.approx([lr, lr / 2.6, lr / 2.6 ** 2,
                                                           lr / 2.6 ** 3])
        assert optimizer.get_lr() == pytest.approx(lr)


# gradual unfreezing


@pytest.mark.e2e
def test_gradual_unfreezing_trains_one_more_group_per_epoch(classification, lms, tmp_path):
    lm_path = tmp_path / "lm.pt"
    shutil.copy(lms[1]["awd_lstm_lm"], lm_path)
    run("train", [str(classification), "--task", "awd_sentence_prediction", *CLASSIFY,
                  "--pretrained-lm", str(lm_path), "--gradual-unfreezing", "--max-epoch", "3",
                  "--save-interval", "1", "--save-dir", str(tmp_path)])
    lm = lm_weights(lm_path)
    ckpt = [None] + [{k[len("encoder."):] if k.startswith("encoder.") else k: v for k, v in
                      load_model_state(tmp_path / f"checkpoint{e}.pt")["model"].items()}
                     for e in (1, 2, 3)]

    def changed(a, b, prefix):
        keys = [k for k in ckpt[a] if k.startswith(prefix)]
        assert keys, prefix
        return any(not torch.equal(ckpt[a][k], ckpt[b][k]) for k in keys)

    assert_encoder_is_lm(ckpt[1], lm)  # epoch 1: head only
    assert_encoder_is_lm(ckpt[2], lm, ("layers.0", "embed_tokens"))  # epoch 2: + top layer
    assert changed(2, 1, "layers.1.")
    assert_encoder_is_lm(ckpt[3], lm, ("embed_tokens",))  # epoch 3: + next layer
    assert changed(3, 2, "layers.0.") and changed(3, 2, "layers.1.")
    for e in (1, 2, 3):
        assert torch.equal(ckpt[e]["embed_tokens.weight"], ckpt[1]["embed_tokens.weight"])
    assert changed(2, 1, "classification_heads.") and changed(3, 2, "classification_heads.")

    # the checkpoint reloads without the LM file: its config holds the LM's sizes
    lm_path.unlink()
    [model], cfg = checkpoint_utils.load_model_ensemble([str(tmp_path / "checkpoint3.pt")])
    assert cfg.model.decoder_embed_dim == 24  # the LM's (TINY_MODEL), not the default 400
    reloaded = {k[len("encoder."):] if k.startswith("encoder.") else k: v
                for k, v in model.state_dict().items()}
    assert reloaded.keys() == ckpt[3].keys()
    assert all(torch.equal(reloaded[k], ckpt[3][k]) for k in reloaded)


# bad input


def fail_train(data, extra):
    return run("train", [str(data), "--task", "awd_sentence_prediction", *CLASSIFY,
                         "--max-update", "1", "--no-save", *extra], check=False)


@pytest.mark.e2e
def test_pretrained_lm_errors(classification, lms, tmp_path):
    lstm_lm, qrnn_lm = str(lms[1]["awd_lstm_lm"]), str(lms[1]["awd_qrnn_lm"])
    assert_one_line_error(fail_train(classification, ["--pretrained-lm", str(tmp_path / "x")]),
                          "--pretrained-lm", "no such file", "--arch awd_lstm_lm")
    assert_one_line_error(fail_train(classification, ["--pretrained-lm", qrnn_lm]),
                          "holds model awd_qrnn_lm", "needs awd_lstm_lm",
                          "--arch awd_qrnn_classifier")
    swapped = tmp_path / "swapped"  # the LM's words, two of them in another order
    shutil.copytree(classification, swapped)
    words = (swapped / "input0" / "dict.txt").read_text(encoding="utf-8").splitlines(True)
    words[5], words[6] = words[6], words[5]
    (swapped / "input0" / "dict.txt").write_text("".join(words), encoding="utf-8")
    assert_one_line_error(fail_train(swapped, ["--pretrained-lm", lstm_lm]),
                          "another dictionary", "--srcdict LM_DATA/dict.txt")


@pytest.mark.e2e
def test_unknown_label_at_test_time(classification, tmp_path):
    data = tmp_path / "bin"
    shutil.copytree(classification, data)
    for suffix in ("bin", "idx"):  # the valid sentences, with test labels
        shutil.copy(data / "input0" / f"valid.{suffix}", data / "input0" / f"test.{suffix}")
    labels = [length_label(line) for line in real_text_lines("valid", 60)]
    labels[7] = labels[9] = labels[40] = "medium\n"
    binarize(tmp_path / "label", {"test": labels}, data / "label" / "dict.txt")
    for suffix in ("bin", "idx"):
        shutil.copy(tmp_path / "label" / f"test.{suffix}", data / "label" / f"test.{suffix}")
    assert_one_line_error(fail_train(data, [*TINY, "--valid-subset", "valid,test"]),
                          "test: 3 examples", "not in label/dict.txt", "example 7")


# end to end on TREC


def trec_split():
    lines = TREC.read_text(encoding="utf-8").splitlines()
    texts, labels = [], []
    for line in lines:
        label, text = line.split(" ", 1)
        texts.append(text + "\n")
        labels.append(label.split(":")[0] + "\n")
    return (texts[:1000], labels[:1000]), (texts[-300:], labels[-300:])


@pytest.mark.e2e
@pytest.mark.skipif(not TREC.exists(), reason=f"TREC training questions not found at {TREC}")
def test_trec_end_to_end(tmp_path):
    (train_x, train_y), (valid_x, valid_y) = trec_split()
    data = binarize_classification(tmp_path / "bin", {"train": train_x, "valid": valid_x},
                                   {"train": train_y, "valid": valid_y})
    majority = 100 * max(Counter(valid_y).values()) / len(valid_y)
    proc = run("train", [str(data), "--task", "awd_sentence_prediction", *CLASSIFY,
                         "--num-classes", "6", "--batch-size", "32", "--max-epoch", "5",
                         "--decoder-embed-dim", "32", "--decoder-hidden-size", "64",
                         "--decoder-layers", "2", "--dropout", "0.1", "--dropouth", "0.1",
                         "--dropouti", "0.1", "--dropoute", "0", "--wdrop", "0.1",
                         "--no-save"])
    accuracy = float(json_logs(proc.stdout + proc.stderr, "valid")[-1]["valid_accuracy"])
    assert accuracy > majority + 20, (accuracy, majority)


@pytest.mark.e2e
def test_language_model_fine_tuning_gets_discriminative_rates(lms):
    """ULMFiT fine-tunes the LM with discriminative rates too: embedding and (tied) output
    layer at depth 0, then the recurrent layers from the top."""
    data, _ = lms
    args = options.parse_args_and_arch(options.get_training_parser(), [
        str(data), "--user-dir", USER_DIR, "--task", "awd_language_modeling", *TINY,
        "--arch", "awd_lstm_lm", "--optimizer", "discriminative_adam", "--lr", "0.01"])
    cfg = convert_namespace_to_omegaconf(args)
    model = tasks.setup_task(cfg.task).build_model(cfg.model)
    optimizer = optim.build_optimizer(cfg.optimizer, list(model.parameters()))
    depth = {id(p): g["layer_depth"] for g in optimizer.param_groups for p in g["params"]}
    decoder = model.decoder
    assert depth[id(decoder.encoder.embed_tokens.weight)] == 0
    assert depth[id(decoder.output_bias)] == 0
    assert {depth[id(p)] for p in decoder.encoder.layers[1].parameters()} == {1}
    assert {depth[id(p)] for p in decoder.encoder.layers[0].parameters()} == {2}
    assert len(depth) == len(list(model.parameters()))
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.01, 0.01 / 2.6,
                                                                      0.01 / 2.6 ** 2])
