"""A plain PyTorch training loop over the very model and batches ``fairseq-train`` would use.

Usage: python scripts/plain_loop.py DATA [the same options as fairseq-train ...]

Used by ``scripts/benchmark_overhead.py`` as the baseline. The options are parsed by
fairseq's own training parser, the task/model are built by fairseq's API with the same
seeds, and the batches come from the task's iterator; but each step is what the reference
AWD-LSTM ``main.py`` does by hand: forward, ``mean NLL + AR + TAR``, backward, gradient
clipping, ``torch.optim.SGD`` (with weight decay) at ``lr * seq_len / bptt``. Without
``--cpu`` it runs on the GPU; with ``--bf16`` the forward pass runs under
``torch.autocast(bfloat16)`` (fp32 weights), as a plain PyTorch user would write it. Like
fairseq's trainer, the torch seed is reset to ``seed + update`` before each step, so the
dropout masks (and hence the losses) match the fairseq run. Prints one JSON line per
update (``update``, ``ntokens``, ``loss`` in bits per token) and a final ``done`` line.
"""

import json
import math
import resource
import sys
from typing import List

import numpy as np
import torch
from fairseq import options, tasks, utils
from fairseq.dataclass.utils import convert_namespace_to_omegaconf


def train_step(model, sample: dict, optimizer: torch.optim.Optimizer,
               params: List[torch.Tensor], cfg) -> float:
    """One step as in the reference main.py; returns the loss (nats/token). A function, so
    that the step's activations are freed on return, as in fairseq's trainer."""
    model.train()
    device = "cpu" if cfg.common.cpu else "cuda"
    with torch.autocast(device, dtype=torch.bfloat16, enabled=cfg.common.bf16):
        net_output = model(**sample["net_input"])
    _, extra = net_output
    target = sample["target"]
    loss = model.decoder.output_nll(net_output, target).mean()  # any output head
    dropped, raw = extra["dropped_output"], extra["raw_output"]
    loss = loss + cfg.criterion.alpha * dropped.pow(2).mean()
    if raw.size(0) > 1:
        loss = loss + cfg.criterion.beta * (raw[1:] - raw[:-1]).pow(2).mean()
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, cfg.optimization.clip_norm)
    optimizer.step()
    optimizer.zero_grad()
    return loss.item()


def main(argv: List[str]) -> None:
    parser = options.get_training_parser()
    cfg = convert_namespace_to_omegaconf(options.parse_args_and_arch(parser, input_args=argv))
    seed = cfg.common.seed
    np.random.seed(seed)
    torch.manual_seed(seed)
    task = tasks.setup_task(cfg.task)
    model = task.build_model(cfg.model)
    if not cfg.common.cpu:
        model = model.cuda()
    params = [p for p in model.parameters() if p.requires_grad]
    base_lr = cfg.optimization.lr[0]
    optimizer = torch.optim.SGD(params, lr=base_lr, weight_decay=cfg.optimizer.weight_decay)
    train = cfg.dataset.train_subset
    task.load_dataset(train, epoch=1, combine=True)
    epoch_itr = task.get_batch_iterator(
        task.dataset(train), num_workers=cfg.dataset.num_workers, epoch=1,
        data_buffer_size=cfg.dataset.data_buffer_size,
    )
    max_update, update = cfg.optimization.max_update, 0
    while update < max_update:
        for sample in epoch_itr.next_epoch_itr(shuffle=False):
            if not cfg.common.cpu:
                sample = utils.move_to_cuda(sample)
            torch.manual_seed(seed + update)
            scale = 1.0 if task.cfg.fixed_bptt else sample["target"].size(1) / task.cfg.bptt
            for group in optimizer.param_groups:
                group["lr"] = base_lr * scale
            loss = train_step(model, sample, optimizer, params, cfg)
            update += 1
            print(json.dumps({"update": update, "ntokens": sample["ntokens"],
                              "loss": loss / math.log(2)}), flush=True)
            if update >= max_update:
                break
    maxrss_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"done": True, "threads": torch.get_num_threads(), "maxrss_kb": maxrss_kb}),
          flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
