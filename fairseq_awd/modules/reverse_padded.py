"""Right-to-left reading of right-padded batches, for the classifiers of backward LMs."""

import torch


def reverse_padded(tokens: torch.Tensor, padding_mask: torch.Tensor) -> torch.Tensor:
    """Reverse each row's real tokens in place of them; the padding stays where it is.

    ``tokens`` ``(B, T)`` is right-padded, ``padding_mask`` ``(B, T)`` True at the padding.
    Row ``b`` of length ``n`` becomes ``tokens[b, n-1], ..., tokens[b, 0]`` followed by its
    ``T - n`` pads, so ``padding_mask`` still describes the result. Returns ``(B, T)``.
    """
    if tokens.shape != padding_mask.shape or tokens.dim() != 2:
        raise ValueError(f"reverse_padded expects tokens and padding_mask of one (B, T) shape, "
                         f"got {tuple(tokens.shape)} and {tuple(padding_mask.shape)}")
    lengths = (~padding_mask).sum(1, keepdim=True)  # (B, 1)
    steps = torch.arange(tokens.size(1), device=tokens.device).expand_as(tokens)
    source = torch.where(steps < lengths, lengths - 1 - steps, steps)
    return tokens.gather(1, source)
