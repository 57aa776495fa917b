"""Stateful language modeling over contiguous streams with randomized-length BPTT.

Modelled on fairseq's ``examples/truncated_bptt``: the split is laid out as
``batch_size`` streams per worker, one item of the dataset is one whole batch, and
iteration is sequential. The AWD-LSTM recipe adds: a new BPTT length per training
step with the learning rate scaled by ``seq_len / bptt`` (Merity et al. 2017,
section 4.1), recurrent state carried across steps, and NT-ASGD's validation hooks.
"""

import logging
import os
from dataclasses import dataclass, field
from typing import Dict, List, Optional

import numpy as np
import torch
from fairseq import utils
from fairseq.data import (
    AppendTokenDataset,
    Dictionary,
    IdDataset,
    ListDataset,
    NestedDictionaryDataset,
    NumelDataset,
    PadDataset,
    PrependTokenDataset,
    StripTokenDataset,
    data_utils,
    iterators,
)
from fairseq.data.indexed_dataset import MMapIndexedDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.models import ARCH_MODEL_REGISTRY, MODEL_REGISTRY, FairseqLanguageModel
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from fairseq_awd.data import BPTTStreams, bptt_windows, data_parallel_position
from fairseq_awd.data.binarized_check import check_binarized
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.optim.ntasgd import NTASGD, ntasgd_of, show_average_weights, show_raw_weights
from fairseq_awd.optim.step_lr_scale import scaled_learning_rates
from fairseq_awd.tasks.cpu_bf16 import allow_bf16_on_cpu

logger = logging.getLogger(__name__)


@dataclass
class AWDLanguageModelingConfig(FairseqDataclass):
    data: str = field(
        default=MISSING,
        metadata={"help": "directory with dict.txt and {train,valid,test}.{bin,idx} written "
                  "by fairseq-preprocess --only-source"},
    )
    bptt: int = field(default=70, metadata={"help": "base BPTT length (tokens per window)"})
    fixed_bptt: bool = field(
        default=False,
        metadata={"help": "train on fixed --bptt windows instead of randomized lengths"},
    )
    bptt_short_prob: float = field(
        default=0.05, metadata={"help": "probability that a training window is based on bptt/2"}
    )
    bptt_std: float = field(
        default=5.0, metadata={"help": "standard deviation of the training window length"}
    )
    bptt_min: int = field(default=5, metadata={"help": "shortest training window"})
    reverse_tokens: bool = field(
        default=False,
        metadata={"help": "read every split's token stream right to left (the same dictionary "
                  "and binarized data): the backward LM of ULMFiT's bidirectional ensemble. "
                  "Saved with the checkpoint, so evaluation reads the same direction"},
    )
    valid_batch_size: int = field(
        default=10,
        metadata={"help": "number of streams for validation and for every split but train "
                  "and test (the paper uses 10)"},
    )
    test_batch_size: int = field(
        default=1, metadata={"help": "number of streams for the test split (the paper uses 1)"}
    )
    batch_size: Optional[int] = II("dataset.batch_size")
    max_tokens: Optional[int] = II("dataset.max_tokens")  # refused by eval_lm_dataloader
    # = --bptt; fairseq-eval-lm subtracts --context-window from it, which eval_lm_dataloader refuses
    tokens_per_sample: int = II(".bptt")
    train_subset: str = II("dataset.train_subset")
    seed: int = II("common.seed")


@register_task("awd_language_modeling", dataclass=AWDLanguageModelingConfig)
class AWDLanguageModelingTask(FairseqTask):
    """Language modeling over ``B`` contiguous streams per worker with carried state.

    Models whose decoder sets ``carries_stream_state`` (the AWD models) receive
    ``stream_id``/``stream_start`` in ``net_input`` and continue each stream from the
    state of the previous window; other fairseq LMs (e.g. ``lstm_lm``) get plain
    ``src_tokens``/``src_lengths`` windows.
    """

    drives_ntasgd = True  # its validation hooks switch NT-ASGD to averaging

    def __init__(self, cfg: AWDLanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.stateful_model = False
        self._window_length = cfg.bptt
        self._ntasgd: Optional[NTASGD] = None
        self._observed_validation = False
        self._finetuning_done = False
        self._stream_states: List[Dict[str, list]] = []  # per model built: {split: state}

    @classmethod
    def setup_task(cls, cfg: AWDLanguageModelingConfig, **kwargs):
        paths = utils.split_paths(cfg.data)
        dict_path = os.path.join(paths[0], "dict.txt")
        if not os.path.isfile(dict_path):
            raise FairseqAWDError(
                f"no dictionary at {dict_path}: binarize the text first with "
                "fairseq-preprocess --only-source --trainpref ... --destdir DATA"
            )
        for option, value, valid, rule in (
            ("--bptt", cfg.bptt, cfg.bptt >= 1, "positive"),
            ("--bptt-min", cfg.bptt_min, cfg.bptt_min >= 1, "positive"),
            ("--bptt-std", cfg.bptt_std, cfg.bptt_std >= 0, "non-negative"),
            ("--bptt-short-prob", cfg.bptt_short_prob, 0 <= cfg.bptt_short_prob <= 1,
             "in [0, 1]"),
            ("--valid-batch-size", cfg.valid_batch_size, cfg.valid_batch_size >= 1,
             "positive (the number of streams)"),
            ("--test-batch-size", cfg.test_batch_size, cfg.test_batch_size >= 1,
             "positive (the number of streams)"),
            ("--batch-size", cfg.batch_size, cfg.batch_size is None or cfg.batch_size >= 1,
             "positive (the number of streams per worker)"),
        ):
            if not valid:
                raise FairseqAWDError(f"{option} must be {rule}, got {value}")
        allow_bf16_on_cpu(cfg)
        dictionary = Dictionary.load(dict_path)
        logger.info("dictionary: %d types", len(dictionary))
        return cls(cfg, dictionary)

    def build_model(self, cfg, from_checkpoint=False):
        name = getattr(cfg, "_name", None) or getattr(cfg, "arch", None)
        model_cls = ARCH_MODEL_REGISTRY.get(name) or MODEL_REGISTRY.get(name)
        if model_cls is not None and not issubclass(model_cls, FairseqLanguageModel):
            given = "the checkpoint holds model" if from_checkpoint else "--arch"
            raise FairseqAWDError(
                f"{given} {name}, which is not a language model: awd_language_modeling trains "
                "and scores language models (--arch awd_lstm_lm, awd_qrnn_lm, ...); give a "
                "checkpoint trained with --task awd_language_modeling, or use the task the "
                f"model was made for (a classifier: --task awd_sentence_prediction)"
            )
        model = super().build_model(cfg, from_checkpoint)
        self.stateful_model = getattr(model.decoder, "carries_stream_state", False)
        if self.stateful_model:
            self._stream_states.append({})
            model.decoder.use_stream_states(self._stream_states[-1])
        return model

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary

    def _streams_for(self, split: str) -> int:
        if split == self.cfg.train_subset:
            if not self.cfg.batch_size:
                raise FairseqAWDError(
                    "awd_language_modeling needs --batch-size (the number of parallel "
                    "streams per worker); --max-tokens alone cannot define streams"
                )
            if self.cfg.max_tokens is not None:
                raise FairseqAWDError(
                    f"--max-tokens {self.cfg.max_tokens} does not apply to "
                    "awd_language_modeling: a batch is --batch-size streams times one BPTT "
                    "window of about --bptt tokens; drop --max-tokens (for fewer tokens per "
                    "step, lower --batch-size or --bptt)"
                )
            return self.cfg.batch_size
        return self.cfg.test_batch_size if split.startswith("test") else self.cfg.valid_batch_size

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False, **kwargs):
        self.datasets[split] = self.load_streams(split, self._streams_for(split), epoch, combine)

    def load_streams(self, split: str, num_streams: int, epoch: int = 1,
                     combine: bool = False) -> BPTTStreams:
        """``split`` laid out as ``num_streams`` streams on this worker's shard."""
        paths = utils.split_paths(self.cfg.data)
        prefix = os.path.join(paths[(epoch - 1) % len(paths)], split)
        if os.path.isfile(prefix + ".bin") and os.path.getsize(prefix + ".bin") == 0:
            raise FairseqAWDError(f"split '{split}' at {prefix} is empty: give it some text")
        dict_path = os.path.join(paths[0], "dict.txt")
        for shard in _shard_prefixes(prefix, combine):
            check_binarized(shard, self.dictionary, dict_path, f"--only-source --{split}pref TEXT")
        data = data_utils.load_indexed_dataset(prefix, self.dictionary, combine=combine)
        if data is None:
            raise FairseqAWDError(
                f"no '{split}' split at {prefix}.{{bin,idx}}: binarize it with fairseq-preprocess "
                f"--only-source --srcdict DATA/dict.txt --{split}pref TEXT --destdir DATA"
            )
        tokens = _concatenate(data)
        if getattr(self.cfg, "reverse_tokens", False):  # absent from older checkpoints
            tokens = tokens.flip(0)
        shard_id, num_shards = data_parallel_position()
        streams = BPTTStreams(
            split, tokens, num_streams, min_length=self.cfg.bptt + 1,
            num_shards=num_shards, shard_id=shard_id,
        )
        logger.info(
            "%s: %d tokens as %d streams of %d on shard %d/%d", split, tokens.numel(),
            streams.batch_size, streams.stream_length, shard_id, num_shards,
        )
        return streams

    def windows(self, streams: BPTTStreams, epoch: int):
        """The epoch's BPTT windows, each as a one-item batch ``[(start, length)]``."""
        training = streams.split == self.cfg.train_subset and not self.cfg.fixed_bptt
        rng = np.random.RandomState((self.cfg.seed + epoch) % 2**32) if training else None
        windows = bptt_windows(
            streams.stream_length, self.cfg.bptt, rng, self.cfg.bptt_short_prob,
            self.cfg.bptt_std, self.cfg.bptt_min,
        )
        return [[w] for w in windows]

    def get_batch_iterator(self, dataset, num_workers=0, epoch=1, data_buffer_size=0,
                           skip_remainder_batch=False, **kwargs):
        if not isinstance(dataset, BPTTStreams):
            return super().get_batch_iterator(
                dataset, num_workers=num_workers, epoch=epoch, data_buffer_size=data_buffer_size,
                skip_remainder_batch=skip_remainder_batch, **kwargs,
            )
        # The dataset is already this worker's shard: fairseq's num_shards/shard_id do not apply.
        # A window is a slice of tensors in memory, so --num-workers and --data-buffer-size
        # are not used: loader processes would only cost a fork per epoch and validation, and
        # a validation worker forked beside the training loader's workers stops those on exit
        # (torch prints "can only test a child process" and the next batch waits ~5 s).
        return StreamStateIterator(
            self._stream_states,
            dataset=dataset,
            collate_fn=self.collate_window,
            batch_sampler=self.windows,
            num_workers=0,
            epoch=epoch,
            buffer_size=0,
            disable_shuffling=True,
        )

    def eval_lm_dataloader(self, dataset, max_tokens=None, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        """The split's fixed ``--bptt`` windows over its streams, in order. The stream count is
        ``--valid-batch-size``/``--test-batch-size``: fairseq-eval-lm's batching options
        (``max_tokens`` is 36000 there even when not given, so the config's value is read)
        and ``--context-window`` are refused."""
        if context_window > 0:
            raise FairseqAWDError(
                "--context-window does not apply: awd_language_modeling carries the recurrent "
                "state across windows; drop the option"
            )
        given = [option for option, value in (("--batch-size", self.cfg.batch_size),
                                              ("--max-tokens", self.cfg.max_tokens))
                 if value is not None]
        if given:
            raise FairseqAWDError(
                f"{' and '.join(given)} cannot batch evaluation: awd_language_modeling scores "
                "each split as contiguous streams, whose number changes the result; drop it and "
                "give --valid-batch-size N (--test-batch-size N for the test split)"
            )
        return self.get_batch_iterator(
            dataset, num_workers=num_workers, data_buffer_size=data_buffer_size
        ).next_epoch_itr(shuffle=False)

    def collate_window(self, items):
        """A one-item list ``[BPTTStreams item]`` -> a fairseq sample of ``B`` streams."""
        (inputs, targets, start, split), = items
        batch, length = inputs.shape
        net_input = {"src_tokens": inputs, "src_lengths": torch.full((batch,), length)}
        if self.stateful_model:
            net_input["stream_id"] = split
            net_input["stream_start"] = start == 0
        return {
            "id": torch.arange(batch),
            "net_input": net_input,
            "target": targets,
            "nsentences": batch,
            "ntokens": inputs.numel(),
        }

    # training: per-step learning-rate scaling and NT-ASGD hooks

    def train_step(self, sample, model, criterion, optimizer, update_num, ignore_grad=False):
        """Forward and backward on the raw iterate (NT-ASGD keeps its average in the model
        between updates); the window's length sets the next step's learning rate."""
        show_raw_weights(optimizer)
        self._window_length = sample["target"].size(1)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def optimizer_step(self, optimizer, model, update_num):
        """The step with ``lr * seq_len / bptt`` (section 4.1; ``--update-freq``: the last
        window's length), then NT-ASGD's average into the model, so that validation and
        every checkpoint see it, under ``--fp16``/``--bf16`` too."""
        factor = 1.0 if self.cfg.fixed_bptt else self._window_length / self.cfg.bptt
        with scaled_learning_rates(optimizer, factor):
            super().optimizer_step(optimizer, model, update_num)
        self._ntasgd = ntasgd_of(optimizer)
        show_average_weights(optimizer)

    def begin_valid_epoch(self, epoch, model):
        self._observed_validation = False

    def post_validate(self, model, stats, aggregator):
        """Feed the first validation subset's loss to NT-ASGD's non-monotone trigger.

        fairseq passes this hook no optimizer, and the loss must be in NT-ASGD's state
        before the checkpoint after validation is written: it goes to the NT-ASGD that the
        last ``optimizer_step`` stepped."""
        ntasgd = self._ntasgd
        if self._observed_validation or ntasgd is None:
            return
        self._observed_validation = True
        fired = ntasgd.observe_validation_loss(float(stats["loss"]))
        if ntasgd.finished:  # now, or before a resume
            self._finetuning_done = True
            logger.info("NT-ASGD fine-tuning: the averaged model's validation loss is worse than "
                        "the best before the last --nonmono checks; stopping after this "
                        "epoch's checkpoints (checkpoint_best.pt holds the best averaged model)")
        elif fired:
            logger.info("NT-ASGD: validation loss stopped improving, switching to averaged SGD")

    def begin_epoch(self, epoch, model):
        """End the fine-tuning stage (``--average-from-start``) once the non-monotone
        condition has fired, as the reference's ``finetune.py`` does: the previous epoch's
        checkpoints are written by then. fairseq's loop has no stop signal a task can give."""
        if self._finetuning_done:
            logger.info("NT-ASGD fine-tuning done before epoch %d", epoch)
            raise SystemExit(0)

    # inference (fairseq-generate/-interactive, hub) works on whole sentences

    def build_dataset_for_inference(self, src_tokens, src_lengths, **kwargs):
        """Sentences without their trailing ``</s>``, with ``</s>`` prepended as BOS to the
        input and a pad appended to the target, as fairseq's ``language_modeling`` does."""
        eos = self.dictionary.eos()
        sentences = StripTokenDataset(ListDataset(src_tokens, np.array(src_lengths)), eos)
        src = PrependTokenDataset(sentences, eos)
        target = AppendTokenDataset(sentences, self.dictionary.pad())
        return NestedDictionaryDataset(
            {
                "id": IdDataset(),
                "net_input": {
                    "src_tokens": PadDataset(src, pad_idx=self.dictionary.pad(), left_pad=False),
                    "src_lengths": NumelDataset(src, reduce=False),
                },
                "target": PadDataset(target, pad_idx=self.dictionary.pad(), left_pad=False),
            },
            sizes=[np.array(src_lengths)],
        )

    def inference_step(self, generator, models, sample, prefix_tokens=None, constraints=None):
        with torch.no_grad():
            eos = self.dictionary.eos()
            if prefix_tokens is None and sample["net_input"]["src_tokens"].nelement():
                prefix_tokens = sample["net_input"]["src_tokens"]
                if prefix_tokens[:, 0].eq(eos).all():
                    prefix_tokens = prefix_tokens[:, 1:]
            return generator.generate(
                models, sample, prefix_tokens=prefix_tokens, constraints=constraints,
                bos_token=eos,
            )

    def max_positions(self):
        return None


class StreamStateIterator(iterators.EpochBatchIterator):
    """fairseq's epoch iterator whose state (``extra_state["train_iterator"]`` of every
    checkpoint) also holds, mid-epoch, the recurrent state each model carries in each of
    this split's streams, so that a run resumed from a ``--save-interval-updates``
    checkpoint continues every stream where it was. ``--reset-dataloader`` drops it, as it
    drops the position in the epoch.

    The state is that of the worker that writes checkpoints (rank 0): other workers of a
    data-parallel run restart their streams from zeros, with a warning.
    """

    def __init__(self, stream_states: List[Dict[str, list]], **kwargs):
        super().__init__(**kwargs)
        self.stream_states = stream_states

    def state_dict(self) -> dict:
        state = super().state_dict()
        if state["iterations_in_epoch"] > 0:
            split = self.dataset.split
            state["stream_states"] = [
                [tuple(t.cpu() for t in pair) for pair in states[split]]
                if split in states else None for states in self.stream_states]
            state["stream_rank"] = data_parallel_position()
        return state

    def load_state_dict(self, state_dict: dict) -> None:
        super().load_state_dict(state_dict)
        saved = state_dict.get("stream_states")
        if saved is None or state_dict.get("iterations_in_epoch", 0) == 0:
            return
        if tuple(state_dict["stream_rank"]) != data_parallel_position():
            logger.warning("the checkpoint holds the stream states of worker %d of %d, this is "
                           "worker %d of %d: they are dropped and this worker's streams restart "
                           "from zeros", *state_dict["stream_rank"], *data_parallel_position())
            return
        if len(saved) != len(self.stream_states):
            raise FairseqAWDError(
                f"the checkpoint holds the stream states of {len(saved)} models, this run "
                f"has {len(self.stream_states)}: resume with the same model, or pass "
                "--reset-dataloader to restart the epoch"
            )
        saved_streams = {layers[0][0].size(1) for layers in saved if layers}
        if saved_streams and saved_streams != {self.dataset.batch_size}:
            logger.warning("the checkpoint holds the recurrent states of %d streams (its "
                           "--batch-size), this run has %d: they are dropped, every stream "
                           "restarts from zeros and the epoch goes on from window %d of the new "
                           "layout", saved_streams.pop(), self.dataset.batch_size,
                           state_dict["iterations_in_epoch"])
            return
        for states, layers in zip(self.stream_states, saved):
            if layers is not None:
                states[self.dataset.split] = [tuple(pair) for pair in layers]


def _shard_prefixes(prefix: str, combine: bool) -> List[str]:
    """``prefix`` and, with ``combine``, the ``prefix1``, ``prefix2``, ... that fairseq's
    ``load_indexed_dataset`` appends while they exist."""
    prefixes = [prefix]
    while combine and os.path.isfile(f"{prefix}{len(prefixes)}.idx"):
        prefixes.append(f"{prefix}{len(prefixes)}")
    return prefixes


def _concatenate(data) -> torch.Tensor:
    """All tokens of an indexed dataset, in order, as one 1-D long tensor."""
    if isinstance(data, MMapIndexedDataset):
        return torch.from_numpy(np.frombuffer(data._bin_buffer, dtype=data._index.dtype)
                                .astype(np.int64))
    if len(data) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([data[i] for i in range(len(data))]).long()
