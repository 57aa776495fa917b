"""Text conversions: the translation's output text, and the LM's view of it."""

from typing import Optional

from fairseq.data.data_utils import post_process
from sacremoses import MosesDetokenizer, MosesTokenizer

from fairseq_awd.errors import FairseqAWDError

BPE_MARKER = "@@ "


def remove_bpe(text: str) -> str:
    """Undo subword-nmt segmentation: fairseq's own ``--remove-bpe`` step."""
    return post_process(text, "subword_nmt")


class TextPipeline:
    """Turns a hypothesis into the output text (for BLEU) and into the LM's tokens.

    Output text: strip ``@@ `` if ``bpe_removal``, then Moses-detokenize if ``detokenize``.
    LM text: the output text Moses-tokenized (``lm_tokenize="moses"``, escape off, like
    fairseq's ``--tokenizer moses``) or split on spaces (``"none"``), lowercased if
    ``lm_lowercase``, then segmented with subword-nmt if ``lm_bpe_codes`` is given.
    """

    def __init__(self, lang: str = "en", bpe_removal: bool = False, detokenize: bool = False,
                 lm_tokenize: str = "moses", lm_lowercase: bool = False,
                 lm_bpe_codes: Optional[str] = None):
        if lm_tokenize not in ("moses", "none"):
            raise FairseqAWDError(f"--lm-tokenize must be moses or none, got {lm_tokenize}")
        self.bpe_removal = bpe_removal
        self.detokenizer = MosesDetokenizer(lang) if detokenize else None
        self.tokenizer = MosesTokenizer(lang) if lm_tokenize == "moses" else None
        self.lm_lowercase = lm_lowercase
        self.bpe = None
        if lm_bpe_codes:
            from subword_nmt.apply_bpe import BPE

            try:
                with open(lm_bpe_codes, encoding="utf-8") as codes:
                    self.bpe = BPE(codes)
            except OSError as err:
                raise FairseqAWDError(f"--lm-bpe-codes: cannot read {lm_bpe_codes}: "
                                      f"{err.strerror}") from None

    def output_text(self, hypothesis: str) -> str:
        """The hypothesis as final output: BPE removed and detokenized as configured."""
        text = remove_bpe(hypothesis) if self.bpe_removal else hypothesis
        if self.detokenizer is not None:
            text = self.detokenizer.detokenize(text.split())
        return text

    def lm_words(self, output_text: str) -> str:
        """Output text -> words as the LM's training text was prepared (before LM BPE)."""
        if self.tokenizer is not None:
            text = self.tokenizer.tokenize(output_text, escape=False, return_str=True)
        else:
            text = " ".join(output_text.split())
        return text.lower() if self.lm_lowercase else text

    def apply_lm_bpe(self, words: str) -> str:
        """Segment LM words with ``lm_bpe_codes`` (unchanged without codes)."""
        return self.bpe.process_line(words) if self.bpe is not None else words
