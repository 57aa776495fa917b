#!/usr/bin/env python3
"""Sample text from a character-level AWD language model and print it as plain text.

The model continues ``--prompt`` one character at a time with fairseq's incremental state
(the hub interface's model), across line ends: a sampled ``</s>`` is a newline, where
``fairseq-interactive`` would stop. Characters are decoded with
``scripts/prepare_data.py``'s inverse (the word-boundary symbol of DATA's
``char-level.json``, ``_`` without one); on enwik8-style byte data the bytes are decoded
as UTF-8.

Example: python scripts/sample_chars.py --data data-bin/tinyshakespeare \\
    --path checkpoints/tinyshakespeare/checkpoint_best.pt --prompt "ROMEO:" --length 300
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
# the character format of fairseq_awd/data/char_text.py, without importing fairseq before
# the options are checked
from prepare_data import BOUNDARY, char_token, chars_to_line, read_char_info  # noqa: E402


def load_format(data: Path) -> dict:
    return read_char_info(str(data)) or {"format": "characters", "boundary": BOUNDARY}


def encode(prompt: str, fmt: dict) -> list[list[str]]:
    """The prompt's lines as token lists (the text after the last newline is unfinished)."""
    if fmt.get("format") == "bytes":
        return [[str(b) for b in line] for line in prompt.encode("utf-8").split(b"\n")]
    boundary = fmt.get("boundary", BOUNDARY)
    return [[char_token(c, boundary) for c in line] for line in prompt.split("\n")]


def decode(lines: list[list[str]], fmt: dict) -> str:
    if fmt.get("format") == "bytes":
        return b"\n".join(bytes(int(t) for t in line if t.isdigit() and int(t) < 256)
                          for line in lines).decode("utf-8", errors="replace")
    boundary = fmt.get("boundary", BOUNDARY)
    return "\n".join(chars_to_line(" ".join(line), boundary) for line in lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, type=Path, help="binarized character data")
    parser.add_argument("--path", required=True, type=Path, help="checkpoint file")
    parser.add_argument("--prompt", default="", help="text to continue (may hold newlines)")
    parser.add_argument("--length", type=int, default=300,
                        help="characters to sample, line ends included")
    parser.add_argument("--temperature", type=float, default=1.0)
    parser.add_argument("--topk", type=int, default=0, help="sample from the k most likely "
                        "characters (0: all)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--cpu", action="store_true")
    parser.add_argument("--bf16", action="store_true", help="run the model in bfloat16 "
                        "(fairseq_awd.bf16_scoring; the sampling distribution stays float32)")
    args = parser.parse_args(argv)
    if args.length < 1 or args.temperature <= 0 or args.topk < 0:
        print("error: --length and --temperature must be positive, --topk non-negative",
              file=sys.stderr)
        return 1

    import torch

    from fairseq_awd import FairseqAWDError, from_pretrained

    try:
        hub = from_pretrained(str(args.path.parent), str(args.data),
                              checkpoint_file=args.path.name,
                              dtype=torch.bfloat16 if args.bf16 else None)
    except FairseqAWDError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    fmt = load_format(args.data)
    model, dictionary = hub.models[0], hub.task.target_dictionary
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    model.to(device).eval()
    torch.manual_seed(args.seed)
    lines = encode(args.prompt, fmt)
    context = [dictionary.eos()]  # a line end before the prompt, as the hub's score()
    for i, line in enumerate(lines):
        context += [dictionary.index(t) for t in line]
        if i + 1 < len(lines):
            context.append(dictionary.eos())
    state: dict = {}
    sampled = []
    with torch.no_grad():
        for token in context[:-1]:  # the prompt's state, one token at a time
            model.decoder(torch.tensor([[token]], device=device), incremental_state=state)
        token = context[-1]
        for _ in range(args.length):
            out = model.decoder(torch.tensor([[token]], device=device), incremental_state=state)
            lprobs = model.get_normalized_probs(out, log_probs=True)[0, -1].float()
            lprobs[[dictionary.pad(), dictionary.bos(), dictionary.unk()]] = -float("inf")
            if args.topk:
                threshold = lprobs.topk(min(args.topk, lprobs.numel())).values[-1]
                lprobs[lprobs < threshold] = -float("inf")
            probs = torch.softmax(lprobs / args.temperature, dim=-1)
            token = int(torch.multinomial(probs, 1))
            sampled.append(token)
    for token in sampled:
        if token == dictionary.eos():
            lines.append([])
        else:
            lines[-1].append(dictionary[token])
    text = decode(lines, fmt)
    sys.stdout.write(text + ("" if text.endswith("\n") else "\n"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
