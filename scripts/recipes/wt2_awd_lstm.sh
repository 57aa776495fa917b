#!/usr/bin/env bash
# Train and evaluate an AWD-LSTM language model on WikiText-2 (v1, tokenized),
# following the reference implementation's README command (salesforce/awd-lstm-lm:
# --dropouth 0.2 --seed 1882, batch size 80, 750 epochs).
#
# Usage: scripts/recipes/wt2_awd_lstm.sh [DATA] [SAVE_DIR] [extra fairseq-train options...]
#   DATA      binarized corpus (default data-bin/wikitext-2); built with
#             scripts/prepare_data.py (downloading WikiText-2) if the directory does not exist
#   SAVE_DIR  checkpoints (default checkpoints/wt2_awd_lstm)
#   PYTHON    environment variable, the interpreter for prepare_data.py (default python)
# Meant for a GPU (fairseq-train uses CUDA when available).
#
# Reference perplexities (Merity, Keskar & Socher 2017, "Regularizing and Optimizing LSTM
# Language Models", Tables 2 and 4), AWD-LSTM, 33M parameters, WikiText-2:
#   without fine-tuning: 69.1 valid / 66.0 test
#   with fine-tuning:    68.6 valid / 65.8 test
# This plugin does not implement the fine-tuning stage (finetune.py), so compare with the
# "without fine-tuning" numbers.
set -euo pipefail

DATA=${1:-data-bin/wikitext-2}
SAVE_DIR=${2:-checkpoints/wt2_awd_lstm}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
USER_DIR="$REPO/fairseq_awd"

if [[ ! -d "$DATA" ]]; then
    "${PYTHON:-python}" "$REPO/scripts/prepare_data.py" --corpus wikitext-2 --dest "$DATA"
fi

fairseq-train "$DATA" --user-dir "$USER_DIR" \
    --task awd_language_modeling --arch awd_lstm_lm_wt2 \
    --criterion awd_cross_entropy --alpha 2 --beta 1 \
    --optimizer ntasgd --nonmono 5 --weight-decay 1.2e-6 --lr 30 --clip-norm 0.25 \
    --lr-scheduler divide_at_epochs \
    --batch-size 80 --bptt 70 --valid-batch-size 10 --test-batch-size 1 \
    --max-epoch 750 --seed 1882 --dropouti 0.4 --dropouth 0.2 \
    --save-dir "$SAVE_DIR" --keep-last-epochs 1 \
    --log-format simple --log-interval 200 "${@:3}"

for subset in valid test; do
    fairseq-eval-lm "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling \
        --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset"
done
