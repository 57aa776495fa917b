"""scripts/benchmark_reference.py: the shim that runs the reference main.py, on a fake checkout.

The fake salesforce/awd-lstm-lm checkout below behaves like the real one where the shim
depends on it: ``main.py`` imports ``model``, ``data``, ``splitcross`` and (through
``model``) ``weight_drop`` from its own folder, pickles its corpus to
``corpus.<md5>.data`` in the working folder and ``torch.load``s it back, takes ``--cuda``
as ``store_false``, evaluates before training (so that WeightDrop registers its raw
Parameter), draws a different window length per update, evaluates between updates, and
saves its model to ``--save`` at the end; ``--model QRNN`` imports ``torchqrnn``, which
imports cupy and pynvrtc at its top as pytorch-qrnn's forget_mult.py does.
"""

import argparse
import importlib.util
import json
import os
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "benchmark_reference.py"
BATCH = 4

MAIN_PY = """\
import argparse
import hashlib
import json
import os
import time

import torch

import data
import model
from splitcross import SplitCrossEntropyLoss

parser = argparse.ArgumentParser()
parser.add_argument('--data', default='data/penn/')
parser.add_argument('--model', default='LSTM')
parser.add_argument('--batch_size', type=int, default=80)
parser.add_argument('--seed', type=int, default=1111)
parser.add_argument('--epochs', type=int, default=8000)
parser.add_argument('--cuda', action='store_false')
parser.add_argument('--save', default=str(time.time()) + '.pt')
args, _ = parser.parse_known_args()
assert not args.cuda, 'passing --cuda means the CPU'
torch.manual_seed(args.seed)
fn = 'corpus.{}.data'.format(hashlib.md5(args.data.encode()).hexdigest())
torch.save(data.Corpus(args.data), fn)
corpus = torch.load(fn)  # a pickled object: fails with torch's weights_only default
nbatch = corpus.train.size(0) // args.batch_size
train_data = corpus.train[:nbatch * args.batch_size].view(args.batch_size, -1).t().contiguous()
net = model.RNNModel(args.model, len(corpus.words), 8)
criterion = SplitCrossEntropyLoss(8, splits=[])
optimizer = torch.optim.SGD(list(net.parameters()), lr=1.0)
net.eval()
net(train_data[:2], None)  # WeightDrop registers its raw Parameter in eval mode
log = open(os.environ['FAKE_LOG'], 'a')  # the test's record of what ran, outside the checkout
batch, i = 0, 0
while i < train_data.size(0) - 1 - 1:
    seq_len = min(3 + batch % 4, train_data.size(0) - 1 - i)
    x, targets = train_data[i:i + seq_len], train_data[i + 1:i + 1 + seq_len].reshape(-1)
    log.write(json.dumps({'fake_batch': batch + 1, 'seq_len': seq_len}) + '\\n')
    log.flush()
    net.train()
    optimizer.zero_grad()
    output, hidden = net(x, None)
    loss = criterion(net.decoder.weight, net.decoder.bias, output, targets)
    loss.backward()
    optimizer.step()
    net.eval()
    net(train_data[:2], None)  # a validation forward between updates
    batch += 1
    i += seq_len
torch.save(net, args.save)
log.write(json.dumps({'fake_finished': batch}) + '\\n')
"""
DATA_PY = """\
import os

import torch


class Corpus(object):
    def __init__(self, path):
        words = open(os.path.join(path, 'train.txt')).read().split()
        self.words = sorted(set(words))
        self.train = torch.tensor([self.words.index(w) for w in words])
"""
MODEL_PY = """\
import torch
import torch.nn as nn

from weight_drop import WeightDrop


class RNNModel(nn.Module):
    def __init__(self, rnn_type, ntoken, ninp):
        super(RNNModel, self).__init__()
        self.encoder = nn.Embedding(ntoken, ninp)
        if rnn_type == 'QRNN':
            from torchqrnn import QRNNLayer
            self.rnn = QRNNLayer(ninp)
            self.rnn.linear = WeightDrop(self.rnn.linear, ['weight'], dropout=0.5)
        else:
            self.rnn = WeightDrop(nn.Linear(ninp, ninp), ['weight'], dropout=0.5)
        self.decoder = nn.Linear(ninp, ntoken)

    def forward(self, input, hidden, return_h=False):
        output = torch.tanh(self.rnn(self.encoder(input)))
        return output.view(-1, output.size(2)), hidden
"""
WEIGHT_DROP_PY = """\
import torch
from torch.nn import Parameter


class WeightDrop(torch.nn.Module):
    def __init__(self, module, weights, dropout=0):
        super(WeightDrop, self).__init__()
        self.module, self.weights, self.dropout = module, weights, dropout
        for name_w in self.weights:
            w = getattr(self.module, name_w)
            del self.module._parameters[name_w]
            self.module.register_parameter(name_w + '_raw', Parameter(w.data))

    def _setweights(self):
        for name_w in self.weights:
            raw_w = getattr(self.module, name_w + '_raw')
            w = torch.nn.functional.dropout(raw_w, p=self.dropout, training=self.training)
            setattr(self.module, name_w, w)

    def forward(self, *args):
        self._setweights()
        return self.module.forward(*args)
"""
SPLITCROSS_PY = """\
import torch.nn as nn
import torch.nn.functional as F


class SplitCrossEntropyLoss(nn.Module):
    def __init__(self, hidden_size, splits, verbose=False):
        super(SplitCrossEntropyLoss, self).__init__()

    def forward(self, weight, bias, hiddens, targets, verbose=False):
        return F.cross_entropy(F.linear(hiddens, weight, bias), targets)
"""
TORCHQRNN_PY = """\
import torch
from cupy.cuda import function  # only the GPU kernel uses these, as in pytorch-qrnn
from pynvrtc.compiler import Program


class QRNNLayer(torch.nn.Module):
    def __init__(self, size):
        super(QRNNLayer, self).__init__()
        self.linear = torch.nn.Linear(size, size)

    def forward(self, x):
        return self.linear(x)
"""


def load_script():
    spec = importlib.util.spec_from_file_location("benchmark_reference", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def fake_checkouts(root: Path):
    """``(awd-lstm-lm, pytorch-qrnn, raw data)`` fakes under ``root``."""
    ref, qrnn, raw = root / "awd-lstm-lm", root / "pytorch-qrnn", root / "penn"
    for folder in (ref, qrnn / "torchqrnn", raw):
        folder.mkdir(parents=True)
    for name, text in (("main.py", MAIN_PY), ("data.py", DATA_PY), ("model.py", MODEL_PY),
                       ("weight_drop.py", WEIGHT_DROP_PY), ("splitcross.py", SPLITCROSS_PY)):
        (ref / name).write_text(text)
    (qrnn / "torchqrnn" / "__init__.py").write_text(TORCHQRNN_PY)
    words = " ".join(f"w{(i * 7) % 23}" for i in range(400))
    for split in ("train", "valid", "test"):
        (raw / f"{split}.txt").write_text(words + "\n")
    return ref, qrnn, raw


def snapshot(*folders: Path) -> dict:
    return {str(p): p.read_bytes() if p.is_file() else None
            for folder in folders for p in sorted(folder.rglob("*"))}


def reference_args(ref: Path, raw: Path) -> argparse.Namespace:
    """--arch lstm, no --qrnn-reference, as main() would parse it."""
    return argparse.Namespace(reference=str(ref), qrnn_reference=None, raw_data=str(raw),
                              data=None, arch="lstm", updates=5, warmup=1, repeats=1,
                              threads=1, precisions=["fp32"], reference_only=True)


def child_env(fake_log: Path) -> dict:
    """One thread; bytecode writing on, as by default, so that a __pycache__ would show."""
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", FAKE_LOG=str(fake_log))
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    return env


def test_fake_fails_without_the_shim_as_the_real_one(tmp_path):
    """The fake needs patches (a) and (b): torch.load of a pickled object, and WeightDrop
    after an evaluation."""
    ref, _, _ = fake_checkouts(tmp_path)
    sys.path.insert(0, str(ref))
    try:
        spec = importlib.util.spec_from_file_location("fake_weight_drop", ref / "weight_drop.py")
        weight_drop = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(weight_drop)
        spec = importlib.util.spec_from_file_location("fake_data", ref / "data.py")
        data = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(data)
    finally:
        sys.path.remove(str(ref))
    layer = weight_drop.WeightDrop(torch.nn.Linear(3, 3), ["weight"], dropout=0.5)
    layer.eval()
    layer(torch.ones(1, 3))
    layer.train()
    with pytest.raises(TypeError, match="cannot assign"):
        layer(torch.ones(1, 3))
    sys.modules["fake_data"] = data
    try:
        torch.save(data.Corpus(str(tmp_path / "penn")), tmp_path / "corpus.data")
        with pytest.raises(Exception, match="weights_only"):
            torch.load(tmp_path / "corpus.data")
    finally:
        del sys.modules["fake_data"]


def test_child_counts_updates_and_tokens_and_leaves_the_checkout(tmp_path):
    module = load_script()
    ref, qrnn, raw = fake_checkouts(tmp_path)
    before = snapshot(ref, qrnn, raw)
    args = reference_args(ref, raw)
    cmd = module.reference_command(args)
    assert "--qrnn-checkout" not in cmd
    cmd[cmd.index("--") + 1:] = ["--batch_size", str(BATCH), "--data", str(raw), "--cuda"]
    fake_log = tmp_path / "fake.log"
    records, rss_kb = module.run_child(cmd, child_env(fake_log))
    updates = [r for _, tag, r in records if tag == "plain"]
    lines = [json.loads(line) for line in fake_log.read_text().splitlines()]
    batches = [r for r in lines if "fake_batch" in r]
    assert [r["update"] for r in updates] == [1, 2, 3, 4, 5]
    # one training batch: seq_len x batch tokens; the validation forwards are not counted
    assert [r["ntokens"] for r in updates] == [b["seq_len"] * BATCH for b in batches]
    assert [b["seq_len"] for b in batches] == [3, 4, 5, 6, 3]
    assert all(0 < r["loss"] < 10 and r["nll_loss"] == r["loss"] for r in updates)
    stamps = [r["t"] for r in updates]
    assert stamps == sorted(stamps)
    # stopped after its 5th update: no 6th batch, no end of the run (its --save model)
    assert not [r for r in lines if "fake_finished" in r]
    assert rss_kb > 0
    result = module.throughput(records, args.warmup)
    assert result["updates"] == 4 and result["tps"] > 0
    assert snapshot(ref, qrnn, raw) == before  # no corpus cache, no model, no __pycache__


def test_reference_only_qrnn_table(tmp_path, capsys, monkeypatch):
    """The whole script with --reference-only and --arch qrnn: cupy and pynvrtc are not
    needed (stand-ins when absent), the table has the reference's row."""
    module = load_script()
    ref, qrnn, raw = fake_checkouts(tmp_path)
    before = snapshot(ref, qrnn, raw)
    # the fake main.py ignores the paper's options but its batch size; keep it small
    monkeypatch.setitem(module.REFERENCE_ARGS, "qrnn",
                        f"--model QRNN --batch_size {BATCH} --seed 9001 --epoch 1 --cuda")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.setenv("FAKE_LOG", str(tmp_path / "fake.log"))
    monkeypatch.delenv("PYTHONDONTWRITEBYTECODE", raising=False)
    module.main(["--arch", "qrnn", "--reference", str(ref), "--qrnn-reference", str(qrnn),
                 "--raw-data", str(raw), "--reference-only", "--updates", "4", "--warmup", "1",
                 "--repeats", "1", "--threads", "1"])
    out = capsys.readouterr().out
    assert "| reference main.py (fp32) |" in out and "| 1.00x |" in out
    assert "fairseq-train" not in out.split("Commands")[0]
    assert "--qrnn-checkout" in out and "--model QRNN" in out
    assert snapshot(ref, qrnn, raw) == before


def test_fairseq_commands_match_the_reference():
    module = load_script()
    args = argparse.Namespace(arch="qrnn", data="data-bin", updates=30)
    cmd = module.fairseq_command(args, "bf16")
    flags = [c for c in cmd if c.startswith("--")]
    assert len(flags) == len(set(flags))  # changed in place, not repeated
    pairs = dict(zip(cmd, cmd[1:]))
    assert pairs["--arch"] == "awd_qrnn_lm" and pairs["--seed"] == "9001"
    assert pairs["--clip-norm"] == "0.2" and pairs["--dropouth"] == "0.3"
    assert pairs["--batch-size"] == "20" and pairs["--max-update"] == "30"
    assert "--bf16" in cmd and "--cpu" in cmd
    args.arch = "lstm"
    pairs = dict(zip(cmd := module.fairseq_command(args, "fp32"), cmd[1:]))
    assert pairs["--arch"] == "awd_lstm_lm" and pairs["--clip-norm"] == "0.25"
    assert pairs["--dropouth"] == "0.25" and pairs["--dropouti"] == "0.4"
    assert "--bf16" not in cmd


def test_report_ratios():
    module = load_script()
    args = argparse.Namespace(arch="lstm", updates=30, warmup=8, repeats=2, threads=1)
    run = {"rss_mb": 900.0, "last_nll_bits": 9.5, "child_clock_tps": None}
    res = {"runs": {"reference": [dict(run, tps=400.0), dict(run, tps=500.0)],
                    "fairseq-train fp32": [dict(run, tps=900.0), dict(run, tps=900.0)]}}
    table = module.report(res, args)
    assert "| reference main.py (fp32) | 450.0 | 400.0, 500.0 | 900 | 9.500 | 1.00x |" in table
    assert "| fairseq-train fp32 | 900.0 | 900.0, 900.0 | 900 | 9.500 | 2.00x |" in table


@pytest.mark.parametrize("case, message", [
    ("no-main", "no main.py there"),
    ("no-qrnn", "--arch qrnn needs --qrnn-reference"),
    ("bad-qrnn", "no torchqrnn/__init__.py"),
    ("no-valid", "no valid.txt there"),
    ("no-data", "--data (binarized PTB) is needed"),
    ("bad-data", "no dict.txt there"),
])
def test_bad_paths_one_line_errors(tmp_path, case, message):
    module = load_script()
    ref, qrnn, raw = fake_checkouts(tmp_path)
    argv = ["--reference", str(ref), "--raw-data", str(raw), "--data", str(tmp_path)]
    if case == "no-main":
        (ref / "main.py").unlink()
    elif case == "no-qrnn":
        argv += ["--arch", "qrnn"]
    elif case == "bad-qrnn":
        argv += ["--arch", "qrnn", "--qrnn-reference", str(tmp_path)]
    elif case == "no-valid":
        (raw / "valid.txt").unlink()
    elif case == "no-data":
        argv = argv[:-2]
    with pytest.raises(SystemExit) as exit_info:
        module.main(argv)
    error = str(exit_info.value.code)
    assert message in error and "\n" not in error
    assert error.startswith("benchmark_reference.py: error: ")

