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
from typing import Optional

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
from fairseq.distributed import utils as dist_utils
from fairseq.tasks import FairseqTask, register_task
from omegaconf import II, MISSING

from fairseq_awd.data import BPTTStreams, bptt_windows
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.optim.step_lr_scale import StepLRScale, torch_optimizer_of

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
    valid_batch_size: int = field(
        default=10,
        metadata={"help": "number of streams for validation and for every split but train "
                  "and test (the paper uses 10)"},
    )
    test_batch_size: int = field(
        default=1, metadata={"help": "number of streams for the test split (the paper uses 1)"}
    )
    batch_size: Optional[int] = II("dataset.batch_size")
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

    def __init__(self, cfg: AWDLanguageModelingConfig, dictionary: Dictionary):
        super().__init__(cfg)
        self.dictionary = dictionary
        self.stateful_model = False
        self._lr_scale: Optional[StepLRScale] = None
        self._optimizer = None
        self._observed_validation = False
        self._finetuning_done = False

    @classmethod
    def setup_task(cls, cfg: AWDLanguageModelingConfig, **kwargs):
        paths = utils.split_paths(cfg.data)
        dict_path = os.path.join(paths[0], "dict.txt")
        if not os.path.isfile(dict_path):
            raise FairseqAWDError(
                f"no dictionary at {dict_path}: binarize the text first with "
                "fairseq-preprocess --only-source --trainpref ... --destdir DATA"
            )
        if cfg.bptt < 1:
            raise FairseqAWDError(f"--bptt must be positive, got {cfg.bptt}")
        dictionary = Dictionary.load(dict_path)
        logger.info("dictionary: %d types", len(dictionary))
        return cls(cfg, dictionary)

    def build_model(self, cfg, from_checkpoint=False):
        model = super().build_model(cfg, from_checkpoint)
        self.stateful_model = getattr(model.decoder, "carries_stream_state", False)
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
        data = data_utils.load_indexed_dataset(prefix, self.dictionary, combine=combine)
        if data is None:
            raise FairseqAWDError(
                f"no '{split}' split at {prefix}.{{bin,idx}}: binarize it with fairseq-preprocess "
                f"--only-source --srcdict DATA/dict.txt --{split}pref TEXT --destdir DATA"
            )
        tokens = _concatenate(data)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            num_shards = dist_utils.get_data_parallel_world_size()
            shard_id = dist_utils.get_data_parallel_rank()
        else:
            num_shards, shard_id = 1, 0
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
        return iterators.EpochBatchIterator(
            dataset=dataset,
            collate_fn=self.collate_window,
            batch_sampler=self.windows,
            num_workers=num_workers,
            epoch=epoch,
            buffer_size=data_buffer_size,
            disable_shuffling=True,
        )

    def eval_lm_dataloader(self, dataset, max_tokens=None, batch_size=None, max_positions=None,
                           num_shards=1, shard_id=0, num_workers=1, data_buffer_size=10,
                           context_window=0):
        if context_window > 0:
            raise FairseqAWDError(
                "--context-window does not apply: awd_language_modeling carries the recurrent "
                "state across windows; drop the option"
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
        self._optimizer = optimizer
        torch_optimizer = torch_optimizer_of(optimizer)
        if hasattr(torch_optimizer, "use_raw_weights"):
            torch_optimizer.use_raw_weights()
        if not self.cfg.fixed_bptt:
            if self._lr_scale is None or self._lr_scale.optimizer is not torch_optimizer:
                self._lr_scale = StepLRScale(torch_optimizer)
            self._lr_scale.scale_next_step(sample["target"].size(1) / self.cfg.bptt)
        return super().train_step(sample, model, criterion, optimizer, update_num, ignore_grad)

    def begin_valid_epoch(self, epoch, model):
        self._observed_validation = False
        torch_optimizer = torch_optimizer_of(self._optimizer)
        if hasattr(torch_optimizer, "use_average_weights"):
            torch_optimizer.use_average_weights()

    def post_validate(self, model, stats, aggregator):
        """Feed the first validation subset's loss to NT-ASGD's non-monotone trigger."""
        torch_optimizer = torch_optimizer_of(self._optimizer)
        if self._observed_validation or not hasattr(torch_optimizer, "observe_validation_loss"):
            return
        self._observed_validation = True
        fired = torch_optimizer.observe_validation_loss(float(stats["loss"]))
        if getattr(torch_optimizer, "finished", False):  # now, or before a resume
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


def _concatenate(data) -> torch.Tensor:
    """All tokens of an indexed dataset, in order, as one 1-D long tensor."""
    if isinstance(data, MMapIndexedDataset):
        return torch.from_numpy(np.frombuffer(data._bin_buffer, dtype=data._index.dtype)
                                .astype(np.int64))
    if len(data) == 0:
        return torch.zeros(0, dtype=torch.long)
    return torch.cat([data[i] for i in range(len(data))]).long()
