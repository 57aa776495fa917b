"""``fairseq-awd-eval``: ``fairseq-eval-lm`` for AWD language models, with the continuous
cache pointer and dynamic evaluation.

    fairseq-awd-eval DATA --path CKPT --gen-subset test                       # = fairseq-eval-lm
    fairseq-awd-eval DATA --path CKPT --gen-subset test --cache-window 500 \\
        --cache-theta 0.5,1 --cache-lambda 0.05,0.1,0.15 --tune-subset valid   # cache, tuned
    fairseq-awd-eval DATA --path CKPT --gen-subset test --dynamic-eval        # Krause et al.

It takes fairseq-eval-lm's options (``--user-dir`` is optional: the plugin is imported) and
scores with fairseq's own ``eval_lm`` loop, so plain evaluation prints exactly what
``fairseq-eval-lm`` prints. A cache or dynamic-evaluation hyperparameter may be a grid,
comma-separated values or ``START:STOP:STEP`` (``fairseq_awd.grid``, as in
``fairseq-awd-rescore``): every combination is scored on ``--tune-subset`` and the best one
on ``--gen-subset``.

fairseq's ``--bf16`` (with ``--cpu`` on the CPU) scores plain and with the cache pointer
in bf16, the log-probabilities and their sums in float32 (``fairseq_awd.bf16_scoring``);
``--dynamic-eval`` refuses it.

On character-level data (``--char-level auto`` finds it: a ``char-level.json`` written by
``scripts/prepare_data.py``, or a dictionary of single characters or of byte values) it
prints, on the line after the perplexity, ``bpc X (counting line ends: Y)``: ``X`` is the
mean of the log2-loss over the characters alone, ``Y`` over characters and line ends
(``</s>``), which is fairseq-eval-lm's ``Loss (base 2)`` and the papers' bpc.
"""

import argparse
import ast
import itertools
import logging
import math
import os
import sys
import time
from typing import Dict, List, Optional, Sequence

import torch
from fairseq import checkpoint_utils, options, tasks, utils
from fairseq.data import Dictionary
from fairseq.dataclass.utils import convert_namespace_to_omegaconf
from fairseq_cli.eval_lm import eval_lm

import fairseq_awd  # noqa: F401  (registers the task and models)
from fairseq_awd.bf16_scoring import DYNAMIC_EVAL_REFUSAL, cast_for_bf16_scoring
from fairseq_awd.data.char_text import CHAR_INFO, ESCAPE
from fairseq_awd.errors import FairseqAWDError
from fairseq_awd.evaluation.scorers import (
    CachePointerLM,
    DynamicEvalLM,
    LineEndScores,
    collect_gradient_statistics,
)
from fairseq_awd.grid import GRID_BOUNDS, check_finite, check_grid_combinations, parse_grid
from fairseq_awd.optim.dynamic_eval import (
    KRAUSE_EPSILON,
    KRAUSE_PTB_DECAY,
    KRAUSE_PTB_LR,
    KRAUSE_SEGMENT_LENGTH,
    KRAUSE_STATISTICS_BATCH_SIZE,
    DynamicEvaluation,
    check_hyperparameters,
)

logger = logging.getLogger("fairseq_awd.evaluation")

GRID_OPTIONS = ("cache_theta", "cache_lambda", "dynamic_lr", "dynamic_decay")
# The reference pointer.py's PTB command line: --window 500 --theta 1.0 --lambdasm 0.1.
REFERENCE_PTB_THETA, REFERENCE_PTB_LAMBDA = 1.0, 0.1


def build_parser() -> argparse.ArgumentParser:
    parser = options.get_eval_lm_parser(default_task="awd_language_modeling")
    group = parser.add_argument_group(
        "fairseq-awd-eval: cache pointer and dynamic evaluation",
        "--cache-theta, --cache-lambda, --dynamic-lr and --dynamic-decay take one value or a "
        "GRID searched on --tune-subset: comma-separated values (a,b,c) or START:STOP:STEP "
        f"(STOP included); {GRID_BOUNDS}")
    group.add_argument("--cache-window", type=int, default=0, metavar="W",
                       help="continuous cache pointer over the last W hidden states of each "
                       "stream (0: off; the reference uses 500 on PTB, 3785 on WikiText-2)")
    group.add_argument("--cache-theta", metavar="T|GRID",
                       help=f"cache softmax scale theta (default {REFERENCE_PTB_THETA}, the "
                       "reference's for PTB; WikiText-2: 0.662)")
    group.add_argument("--cache-lambda", metavar="L|GRID",
                       help=f"weight of the cache in the mixture, in [0, 1] (default "
                       f"{REFERENCE_PTB_LAMBDA}, the reference's for PTB; WikiText-2: 0.1279)")
    group.add_argument("--dynamic-eval", action="store_true",
                       help="dynamic evaluation (Krause et al. 2017): a gradient step on each "
                       "segment after scoring it, RMS-normalized with a decay to the trained "
                       "weights")
    group.add_argument("--dynamic-sgd", action="store_true",
                       help="with --dynamic-eval: the plain SGD variant (no gradient "
                       "statistics; --dynamic-decay defaults to 0)")
    group.add_argument("--dynamic-lr", metavar="ETA|GRID",
                       help=f"dynamic-evaluation learning rate (default {KRAUSE_PTB_LR}, Krause "
                       "et al.'s for AWD-LSTM on PTB; required with --dynamic-sgd)")
    group.add_argument("--dynamic-decay", metavar="LAMBDA|GRID",
                       help=f"decay rate towards the trained weights (default {KRAUSE_PTB_DECAY}; "
                       "0 with --dynamic-sgd)")
    group.add_argument("--dynamic-epsilon", type=float, default=KRAUSE_EPSILON,
                       help="stabilizer of the RMS normalization")
    group.add_argument("--dynamic-bptt", type=int, default=KRAUSE_SEGMENT_LENGTH,
                       help="tokens per segment (one gradient step each); replaces --bptt")
    group.add_argument("--dynamic-stats-subset", default="train",
                       help="split whose gradients give the RMS statistics")
    group.add_argument("--dynamic-stats-streams", type=int,
                       default=KRAUSE_STATISTICS_BATCH_SIZE,
                       help="streams (batch size) of the statistics pass")
    group.add_argument("--dynamic-stats-max-batches", type=int, default=-1,
                       help="windows of the statistics pass (-1: the whole split)")
    group.add_argument("--tune-subset", metavar="SPLIT",
                       help="split on which a grid (a,b,c or START:STOP:STEP) is searched; the "
                       "best values then score --gen-subset, which must be another split")
    group = parser.add_argument_group("fairseq-awd-eval: bits per character")
    group.add_argument("--char-level", choices=("auto", "on", "off"), default="auto",
                       help="print 'bpc X (counting line ends: Y)' after the perplexity: on, "
                       "off, or auto: when DATA has prepare_data.py's char-level.json or its "
                       "dictionary holds single characters or byte values only")
    return parser


def character_level(data: str, dictionary: Dictionary) -> Optional[str]:
    """Why ``data`` (a binarized directory) is character-level, or None when it is not: its
    ``char-level.json`` (``scripts/prepare_data.py``), or a dictionary whose symbols
    (fairseq's specials and ``--padding-factor`` fillers aside) are all single characters
    (``<U+XXXX>`` escapes included) or all byte values 0-255 (the reference's enwik8)."""
    if os.path.isfile(os.path.join(data, CHAR_INFO)):
        return f"{CHAR_INFO} in {data}"
    symbols = [dictionary[i] for i in range(dictionary.nspecial, len(dictionary))
               if not dictionary[i].startswith("madeupword")]
    if not symbols:
        return None
    if all(len(s) == 1 or ESCAPE.fullmatch(s) for s in symbols):
        return "a dictionary of single characters"
    if all(s.isdigit() and int(s) < 256 for s in symbols):
        return "a dictionary of byte values"
    return None


def grid_or_default(value: Optional[str], option: str, default: Optional[float]) -> List[float]:
    """The values of ``option`` (``fairseq_awd.grid``'s syntax), or ``[default]`` when it is
    not given; refused when it has no default."""
    if value is None:
        if default is None:
            raise FairseqAWDError(f"{option} is required here: give a learning rate such as "
                                  "1e-4 (or a grid with --tune-subset)")
        return [default]
    return parse_grid(value, option)


def check_options(args: argparse.Namespace) -> Dict[str, List[float]]:
    """Refuse bad options with one line each; return the grids."""
    if args.cache_window < 0:
        raise FairseqAWDError(f"--cache-window must be 0 (off) or positive, got "
                              f"{args.cache_window}")
    for option in ("cache_theta", "cache_lambda"):
        if getattr(args, option) is not None and not args.cache_window:
            raise FairseqAWDError(f"--{option.replace('_', '-')} is a cache option: add "
                                  "--cache-window W (e.g. 500) to use the cache")
    for option in ("dynamic_sgd", "dynamic_lr", "dynamic_decay"):
        if getattr(args, option) not in (None, False) and not args.dynamic_eval:
            raise FairseqAWDError(f"--{option.replace('_', '-')} is a dynamic-evaluation "
                                  "option: add --dynamic-eval")
    check_finite(args.dynamic_epsilon, "--dynamic-epsilon",
                 f"give a small positive number such as {KRAUSE_EPSILON:g}")
    if args.dynamic_bptt < 1:
        raise FairseqAWDError(f"--dynamic-bptt must be positive, got {args.dynamic_bptt}")
    if args.dynamic_stats_streams < 1:
        raise FairseqAWDError(f"--dynamic-stats-streams must be positive, got "
                              f"{args.dynamic_stats_streams}")
    if args.dynamic_eval and args.bf16:
        raise FairseqAWDError(DYNAMIC_EVAL_REFUSAL)
    if not args.path:
        raise FairseqAWDError("--path is required: the checkpoint to evaluate, e.g. "
                              "--path CKPT/checkpoint_best.pt")
    if ":" in args.path:
        raise FairseqAWDError("fairseq-awd-eval scores one model: give one --path")
    if args.softmax_batch != sys.maxsize and (args.cache_window or args.dynamic_eval):
        raise FairseqAWDError("--softmax-batch splits each window's scoring in pieces, which "
                              "the cache and dynamic evaluation cannot follow: drop it")
    grids = {}
    if args.cache_window:
        grids["cache_theta"] = grid_or_default(args.cache_theta, "--cache-theta",
                                               REFERENCE_PTB_THETA)
        grids["cache_lambda"] = grid_or_default(args.cache_lambda, "--cache-lambda",
                                                REFERENCE_PTB_LAMBDA)
        if any(t < 0 for t in grids["cache_theta"]):
            raise FairseqAWDError(f"--cache-theta must be non-negative, got {args.cache_theta}")
        if any(not 0.0 <= v <= 1.0 for v in grids["cache_lambda"]):
            raise FairseqAWDError(f"--cache-lambda must be in [0, 1], got {args.cache_lambda}")
    if args.dynamic_eval:
        grids["dynamic_lr"] = grid_or_default(
            args.dynamic_lr, "--dynamic-lr", None if args.dynamic_sgd else KRAUSE_PTB_LR)
        grids["dynamic_decay"] = grid_or_default(
            args.dynamic_decay, "--dynamic-decay", 0.0 if args.dynamic_sgd else KRAUSE_PTB_DECAY)
        for lr, decay in itertools.product(grids["dynamic_lr"], grids["dynamic_decay"]):
            check_hyperparameters(lr, decay)
    is_grid = any(len(values) > 1 for values in grids.values())
    if is_grid and not args.tune_subset:
        raise FairseqAWDError("more than one value is a grid: give --tune-subset valid (the "
                              "split to search it on), or one value per option")
    if args.tune_subset and not is_grid:
        raise FairseqAWDError("--tune-subset needs a grid: give a,b,c or START:STOP:STEP to "
                              "--cache-theta, --cache-lambda, --dynamic-lr or --dynamic-decay")
    if args.tune_subset and args.tune_subset == args.gen_subset:
        raise FairseqAWDError(f"--tune-subset {args.tune_subset} is the --gen-subset: the "
                              "perplexity of the split the grid was tuned on is optimistic; "
                              "tune on another split (e.g. --tune-subset valid --gen-subset "
                              "test)")
    check_grid_combinations({f"--{name.replace('_', '-')}": values
                             for name, values in grids.items()})
    return grids


class Evaluator:
    """One loaded model and task; scores a split with a chosen setting through fairseq's
    ``eval_lm``."""

    def __init__(self, cfg, args: argparse.Namespace):
        self.cfg, self.args = cfg, args
        if not os.path.isfile(cfg.common_eval.path):
            raise FairseqAWDError(f"--path: no checkpoint at {cfg.common_eval.path}")
        self.task = tasks.setup_task(cfg.task)
        models, _, self.task = checkpoint_utils.load_model_ensemble_and_task(
            [cfg.common_eval.path], arg_overrides=ast.literal_eval(cfg.common_eval.model_overrides),
            task=self.task,
        )
        self.model = models[0]
        if not getattr(getattr(self.model, "decoder", None), "carries_stream_state", False):
            raise FairseqAWDError(f"{cfg.common_eval.path} is not an AWD language model "
                                  "(awd_lstm_lm, awd_qrnn_lm): fairseq-awd-eval needs one")
        if torch.cuda.is_available() and not cfg.common.cpu:
            self.model.cuda()
        if cfg.common.fp16:
            self.model.half()
        elif cfg.common.bf16:  # fairseq's --bf16 (with --cpu on the CPU): bf16 scoring
            cast_for_bf16_scoring(self.model, cfg.common_eval.path)
        self.model.eval()
        self.optimizer: Optional[DynamicEvaluation] = None
        if args.dynamic_eval:
            self.optimizer = DynamicEvaluation(
                self.model.parameters(), lr=0.0, epsilon=args.dynamic_epsilon,
                rms=not args.dynamic_sgd,
            )
            if not args.dynamic_sgd:
                start = time.time()
                used = collect_gradient_statistics(
                    self.model, self.task, self.optimizer, args.dynamic_stats_subset,
                    args.dynamic_stats_streams, args.dynamic_bptt,
                    args.dynamic_stats_max_batches,
                )
                logger.info("dynamic evaluation: gradient statistics from %d windows of '%s' "
                            "in %.1fs", used, args.dynamic_stats_subset, time.time() - start)
        self._loaded = set()
        self.char_level: Optional[str] = None
        if args.char_level != "off":
            data = utils.split_paths(cfg.task.data)[0]
            self.char_level = character_level(data, self.task.target_dictionary) or (
                "--char-level on" if args.char_level == "on" else None)
            if self.char_level is not None:
                logger.info("character-level data (%s): bits per character follow the "
                            "perplexity", self.char_level)

    def scorer(self, setting: Dict[str, float]) -> torch.nn.Module:
        model = self.model
        if self.optimizer is not None:  # at the trained weights: score() resets after use
            self.optimizer.set_hyperparameters(setting["dynamic_lr"], setting["dynamic_decay"])
            model = DynamicEvalLM(model, self.optimizer, self.task.target_dictionary.pad())
        if self.args.cache_window:
            model = CachePointerLM(model, self.args.cache_window, setting["cache_theta"],
                                   setting["cache_lambda"])
        return model

    def dataset(self, split: str):
        if split not in self._loaded:
            self.task.load_dataset(split)
            self._loaded.add(split)
        dataset = self.task.dataset(split)
        if self.args.cache_window and dataset.stream_length - 1 <= self.args.cache_window:
            raise FairseqAWDError(
                f"split '{split}' has streams of {dataset.stream_length} tokens, too short for "
                f"--cache-window {self.args.cache_window}: the cache would never apply; use a "
                "smaller window or fewer streams (--valid-batch-size / --test-batch-size 1)"
            )
        return dataset

    def score(self, split: str, setting: Dict[str, float]) -> Dict[str, float]:
        cfg = self.cfg
        itr = self.task.eval_lm_dataloader(dataset=self.dataset(split),
                                           num_workers=cfg.dataset.num_workers)
        model = self.scorer(setting)
        if self.char_level is not None:
            model = LineEndScores(model, self.task.target_dictionary)
        results = eval_lm(
            models=[model], source_dictionary=self.task.source_dictionary,
            batch_iterator=itr, post_process=cfg.common_eval.post_process,
            output_word_probs=cfg.eval_lm.output_word_probs,
            output_word_stats=cfg.eval_lm.output_word_stats,
            target_dictionary=self.task.target_dictionary,
            softmax_batch=cfg.eval_lm.softmax_batch,
        )
        if self.optimizer is not None:
            self.optimizer.reset()
        if self.char_level is not None:
            results["bpc"] = model.bits_per_character()
            results["bpc_with_line_ends"] = float(results["loss"])
        return results


def tune(evaluator: Evaluator, grids: Dict[str, List[float]], split: str) -> Dict[str, float]:
    """Score every combination of ``grids`` on ``split`` (each logged); return the best."""
    names = [name for name in GRID_OPTIONS if name in grids]
    best, best_ppl = {}, math.inf
    for values in itertools.product(*(grids[name] for name in names)):
        setting = dict(zip(names, values))
        ppl = float(evaluator.score(split, setting)["perplexity"])
        logger.info("tune on %s: %s: Perplexity: %.2f", split, format_setting(setting), ppl)
        if ppl < best_ppl:
            best, best_ppl = setting, ppl
    return best


def format_setting(setting: Dict[str, float]) -> str:
    return ", ".join(f"--{name.replace('_', '-')} {value:g}" for name, value in setting.items())


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, float]:
    parser = build_parser()
    args = options.parse_args_and_arch(parser, None if argv is None else list(argv))
    grids = check_options(args)
    if args.dynamic_eval:
        args.bptt = args.dynamic_bptt
    cfg = convert_namespace_to_omegaconf(args)
    utils.import_user_module(cfg.common)
    evaluator = Evaluator(cfg, args)
    setting = {name: values[0] for name, values in grids.items()}
    if args.tune_subset:
        setting = tune(evaluator, grids, args.tune_subset)
        logger.info("best on %s: %s", args.tune_subset, format_setting(setting))
    if setting:
        logger.info("scoring %s with %s", cfg.dataset.gen_subset, format_setting(setting))
    results = evaluator.score(cfg.dataset.gen_subset, setting)
    logger.info("Loss (base 2): {:.4f}, Perplexity: {:.2f}".format(
        results["loss"], results["perplexity"]))
    if "bpc" in results:
        logger.info("bpc {:.4f} (counting line ends: {:.4f})".format(
            results["bpc"], results["bpc_with_line_ends"]))
    return dict(results, **setting)


def cli_main() -> None:
    # Logging is set up as fairseq-eval-lm's (importing fairseq_cli.eval_lm configures it).
    main()


if __name__ == "__main__":
    cli_main()
