"""A seed gives the same model as it always did: the random draws that initialize an AWD LM
(embedding, recurrent layers, output layer) are taken in the same order.

``fixtures/seeded_models.pt`` holds the state dicts (under the keys of the time) and the
parameter order of the models of ``CONFIGS`` as ``build`` made them with the code of commit
eca1986, before the decoder held its encoder and output head (issue 30); ``write_fixture``
wrote it. Each model built now must have every weight equal, once the old keys are upgraded
as old checkpoints are, and its parameters in the same order (what the optimizer state of a
checkpoint is matched by).
"""

import dataclasses
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from fairseq.data import Dictionary

from fairseq_awd.models.awd_lstm_lm import AWDLSTMConfig, AWDLSTMLanguageModel
from fairseq_awd.models.awd_qrnn_lm import AWDQRNNConfig, AWDQRNNLanguageModel

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "seeded_models.pt"
MODELS = {"lstm": (AWDLSTMConfig, AWDLSTMLanguageModel),
          "qrnn": (AWDQRNNConfig, AWDQRNNLanguageModel)}
CONFIGS = {
    "lstm_full": ("lstm", {}),
    "lstm_full_untied": ("lstm", {"untie_weights": True, "decoder_out_embed_dim": 6}),
    "lstm_adaptive": ("lstm", {"adaptive_softmax_cutoff": "8,15",
                               "adaptive_softmax_dropout": 0.1}),
    "lstm_adaptive_untied": ("lstm", {"adaptive_softmax_cutoff": "8,15", "untie_weights": True,
                                      "decoder_out_embed_dim": 6}),
    "lstm_mos": ("lstm", {"mos_components": 3, "decoder_out_embed_dim": 11}),
    "lstm_mos_untied": ("lstm", {"mos_components": 3, "untie_weights": True}),
    "qrnn_full": ("qrnn", {"qrnn_window": 2}),
    "qrnn_adaptive_untied": ("qrnn", {"adaptive_softmax_cutoff": "10", "untie_weights": True}),
    "qrnn_mos": ("qrnn", {"mos_components": 2}),
}


# Options added since the fixture was written that change the initial weights on purpose,
# at the values that initialize as the code of then did (the draw order is under test).
SINCE = {"qrnn_init_gain": 0.0}  # PyTorch's default init of the QRNN gate projections


def build(name: str, seed: int = 7):
    kind, overrides = CONFIGS[name]
    dictionary = Dictionary()
    for i in range(26):
        dictionary.add_symbol(f"w{i}")
    config_class, model_class = MODELS[kind]
    cfg = dict(decoder_embed_dim=8, decoder_hidden_size=12, decoder_layers=2, dropout=0.3,
               dropouth=0.2, dropouti=0.3, dropoute=0.1, wdrop=0.4, **overrides)
    known = {f.name for f in dataclasses.fields(config_class)}
    cfg.update({option: value for option, value in SINCE.items() if option in known})
    torch.manual_seed(seed)
    task = SimpleNamespace(target_dictionary=dictionary, source_dictionary=dictionary)
    return model_class.build_model(config_class(**cfg), task)


def write_fixture(path: Path = FIXTURE) -> None:
    models = {name: build(name) for name in CONFIGS}
    torch.save({name: {"state_dict": model.state_dict(),
                       "parameters": [n for n, _ in model.named_parameters()]}
                for name, model in models.items()}, path)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_a_seed_gives_the_same_model_as_before(name):
    from fairseq_awd.checkpoint_compat import upgraded_decoder_key

    before = torch.load(FIXTURE, weights_only=True)[name]
    model = build(name)
    old = {upgraded_decoder_key(key): value for key, value in before["state_dict"].items()}
    now = model.state_dict()
    assert sorted(now) == sorted(old)
    for key, value in now.items():
        assert torch.equal(value, old[key]), key
    assert [n for n, _ in model.named_parameters()] == [
        upgraded_decoder_key(key) for key in before["parameters"]]
