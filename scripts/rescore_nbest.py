"""Rerank fairseq-generate --nbest output with a language model (``fairseq-awd-rescore``)."""
from fairseq_awd.errors import install_excepthook
from fairseq_awd.rescoring.cli import main

if __name__ == "__main__":
    install_excepthook()  # bad input as one line
    main()
