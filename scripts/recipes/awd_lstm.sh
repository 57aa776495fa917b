#!/usr/bin/env bash
# Train and evaluate the AWD-LSTM of Merity, Keskar & Socher 2017 ("Regularizing and
# Optimizing LSTM Language Models") with the reference implementation's README commands
# (salesforce/awd-lstm-lm, PyTorch >= 0.4). Meant for a GPU (fairseq uses CUDA when present).
#
# Usage: scripts/recipes/awd_lstm.sh {ptb|wikitext-2} [DATA] [SAVE_DIR] [fairseq-train options...]
#   DATA      binarized corpus (default data-bin/CORPUS), built with scripts/prepare_data.py
#             (downloading the corpus) if the directory does not exist
#   SAVE_DIR  checkpoints (default checkpoints/CORPUS_awd_lstm)
#   PYTHON    environment variable, the interpreter for prepare_data.py (default python)
#
# Reference perplexities (paper Tables 1, 2 and 4), valid / test:
#   ptb        (awd_lstm_lm, 24M):     60.7 / 58.8 without fine-tuning, 60.0 / 57.3 with it
#   wikitext-2 (awd_lstm_lm_wt2, 33M): 69.1 / 66.0 without fine-tuning, 68.6 / 65.8 with it
# This plugin does not implement the fine-tuning stage (finetune.py): compare with the
# numbers without fine-tuning.
set -euo pipefail

CORPUS=${1:-}
case "$CORPUS" in
    # reference: --batch_size 20 --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500
    ptb) SETTING=(--arch awd_lstm_lm --batch-size 20 --dropouti 0.4 --dropouth 0.25
                  --seed 141 --max-epoch 500) ;;
    # reference: --epochs 750 --dropouth 0.2 --seed 1882 (batch size 80 by default)
    wikitext-2) SETTING=(--arch awd_lstm_lm_wt2 --batch-size 80 --seed 1882 --max-epoch 750) ;;
    *) echo "error: unknown corpus '$CORPUS': usage: $0 {ptb|wikitext-2} [DATA] [SAVE_DIR]" >&2
       exit 1 ;;
esac
DATA=${2:-data-bin/$CORPUS}
SAVE_DIR=${3:-checkpoints/${CORPUS}_awd_lstm}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
USER_DIR="$REPO/fairseq_awd"

if [[ ! -d "$DATA" ]]; then
    "${PYTHON:-python}" "$REPO/scripts/prepare_data.py" --corpus "$CORPUS" --dest "$DATA"
fi

fairseq-train "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling "${SETTING[@]}" \
    --criterion awd_cross_entropy --alpha 2 --beta 1 \
    --optimizer ntasgd --nonmono 5 --weight-decay 1.2e-6 --lr 30 --clip-norm 0.25 \
    --lr-scheduler divide_at_epochs --bptt 70 --valid-batch-size 10 --test-batch-size 1 \
    --save-dir "$SAVE_DIR" --keep-last-epochs 1 --log-format simple --log-interval 200 \
    "${@:4}"

for subset in valid test; do
    fairseq-eval-lm "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling \
        --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset"
done
