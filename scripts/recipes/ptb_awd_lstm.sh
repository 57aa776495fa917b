#!/usr/bin/env bash
# Train and evaluate an AWD-LSTM language model on Penn Treebank (Mikolov's version),
# following the reference implementation's README command (salesforce/awd-lstm-lm,
# PyTorch >= 0.4: --dropouti 0.4 --dropouth 0.25 --seed 141, 500 epochs).
#
# Usage: scripts/recipes/ptb_awd_lstm.sh [DATA] [SAVE_DIR] [extra fairseq-train options...]
#   DATA      binarized corpus (default data-bin/ptb); built with scripts/prepare_data.py
#             (downloading PTB) if the directory does not exist
#   SAVE_DIR  checkpoints (default checkpoints/ptb_awd_lstm)
#   PYTHON    environment variable, the interpreter for prepare_data.py (default python)
# Meant for a GPU (fairseq-train uses CUDA when available).
#
# Reference perplexities (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM
# Language Models", Tables 1 and 4), AWD-LSTM, 24M parameters, PTB:
#   without fine-tuning: 60.7 valid / 58.8 test
#   with fine-tuning:    60.0 valid / 57.3 test
# This plugin does not implement the fine-tuning stage (finetune.py), so compare with the
# "without fine-tuning" numbers.
set -euo pipefail

DATA=${1:-data-bin/ptb}
SAVE_DIR=${2:-checkpoints/ptb_awd_lstm}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
USER_DIR="$REPO/fairseq_awd"

if [[ ! -d "$DATA" ]]; then
    "${PYTHON:-python}" "$REPO/scripts/prepare_data.py" --corpus ptb --dest "$DATA"
fi

fairseq-train "$DATA" --user-dir "$USER_DIR" \
    --task awd_language_modeling --arch awd_lstm_lm \
    --criterion awd_cross_entropy --alpha 2 --beta 1 \
    --optimizer ntasgd --nonmono 5 --weight-decay 1.2e-6 --lr 30 --clip-norm 0.25 \
    --lr-scheduler divide_at_epochs \
    --batch-size 20 --bptt 70 --valid-batch-size 10 --test-batch-size 1 \
    --max-epoch 500 --seed 141 --dropouti 0.4 --dropouth 0.25 \
    --save-dir "$SAVE_DIR" --keep-last-epochs 1 \
    --log-format simple --log-interval 200 "${@:3}"

for subset in valid test; do
    fairseq-eval-lm "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling \
        --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset"
done
