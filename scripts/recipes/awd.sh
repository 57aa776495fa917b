#!/usr/bin/env bash
# Train and evaluate the AWD language models with the command lines of the reference
# implementation's README (salesforce/awd-lstm-lm, PyTorch >= 0.4). Meant for a GPU
# (fairseq uses CUDA when present).
#
# Usage: scripts/recipes/awd.sh RECIPE [DATA] [SAVE_DIR] [fairseq-train options...]
#   RECIPE    lstm-ptb, lstm-wikitext-2, qrnn-ptb, qrnn-wikitext-2, qrnn-wikitext-103 or
#             lstm-wikitext-103 (the QRNN WikiText-103 command with LSTM layers); for the
#             PTB and WikiText-2 ones, RECIPE-finetune is the fine-tuning stage (the
#             reference's finetune.py: ntasgd --average-from-start, restarted from
#             checkpoints/RECIPE/checkpoint_best.pt, or $BASE_CHECKPOINT), which ends when
#             the non-monotone condition fires and is then scored with the cache pointer
#   DATA      binarized corpus (default data-bin/CORPUS), built with scripts/prepare_data.py
#             (downloading the corpus) if the directory does not exist
#   SAVE_DIR  checkpoints (default checkpoints/RECIPE)
#   PYTHON    environment variable, the interpreter for prepare_data.py (default python)
# Extra options go to fairseq-train after the recipe's, so they override it.
#
# Reference perplexities, valid / test (the reference README's, the papers' in brackets):
#                      training           + fine-tuning      + cache pointer
#   lstm-ptb           61.2 / 58.8        58.8 / 56.5        53.2 / 52.5  (paper 60.0 / 57.3
#                                                                          fine-tuned)
#   lstm-wikitext-2    68.7 / 65.6        67.4 / 64.7        52.2 / 50.6  (paper 68.6 / 65.8)
#   qrnn-ptb           60.6 / 58.3        59.1 / 56.7        53.4 / 52.6
#   qrnn-wikitext-2    69.3 / 66.8        68.5 / 65.9        53.6 / 52.1
#   qrnn-wikitext-103  33.0 test after 12 hours on one GPU (Merity et al. 2018)
# The cache uses pointer.py's values: PTB --cache-window 500 --cache-theta 1.0
# --cache-lambda 0.1; WikiText-2 --cache-window 3785 --cache-theta 0.662 --cache-lambda
# 0.1279. Dynamic evaluation (Krause et al. 2017: 51.6 / 51.1 on PTB, 46.4 / 44.3 on
# WikiText-2 with the fine-tuned AWD-LSTM) is `fairseq-awd-eval ... --dynamic-eval`.
set -euo pipefail

RECIPE=${1:-}
STAGE=train
if [[ "$RECIPE" == *-finetune ]]; then
    STAGE=finetune
    RECIPE=${RECIPE%-finetune}
fi
# NT-ASGD training of the 2017 paper, shared by the PTB and WikiText-2 recipes; the
# reference's defaults not on its command lines: --alpha 2 --beta 1 --wdecay 1.2e-6
# --lr 30 --bptt 70 --nonmono 5.
NTASGD=(--criterion awd_cross_entropy --alpha 2 --beta 1 --optimizer ntasgd --nonmono 5
        --weight-decay 1.2e-6 --lr 30 --lr-scheduler divide_at_epochs --bptt 70)
# The 12-hour WikiText-103 command of Merity et al. 2018: --epochs 14 --nlayers 4
# --emsize 400 --nhid 2500 --alpha 0 --beta 0 --dropoute 0 --dropouth 0.1 --dropouti 0.1
# --dropout 0.1 --wdrop 0 --wdecay 0 --bptt 140 --batch_size 60 --optimizer adam --lr 1e-3
# --when 12 (clip 0.25 and seed 1111 are the reference's defaults); the architectures hold
# the model part, including the tied adaptive softmax cut at 2800, 20000 and 76000 words.
WT103=(--criterion awd_cross_entropy --alpha 0 --beta 0 --optimizer adam --lr 1e-3
       --weight-decay 0 --clip-norm 0.25 --lr-scheduler divide_at_epochs --when 12
       --max-epoch 14 --batch-size 60 --bptt 140 --seed 1111)
case "$RECIPE" in
    # reference: --batch_size 20 --dropouti 0.4 --dropouth 0.25 --seed 141 --epoch 500
    lstm-ptb) CORPUS=ptb; SETTING=(--arch awd_lstm_lm "${NTASGD[@]}" --clip-norm 0.25
              --batch-size 20 --dropouti 0.4 --dropouth 0.25 --seed 141 --max-epoch 500) ;;
    # reference: --epochs 750 --dropouth 0.2 --seed 1882 (batch size 80 by default)
    lstm-wikitext-2) CORPUS=wikitext-2; SETTING=(--arch awd_lstm_lm_wt2 "${NTASGD[@]}"
              --clip-norm 0.25 --batch-size 80 --seed 1882 --max-epoch 750) ;;
    # reference: --model QRNN --batch_size 20 --clip 0.2 --wdrop 0.1 --nhid 1550 --nlayers 4
    #   --emsize 400 --dropouth 0.3 --seed 9001 --dropouti 0.4 --epochs 550
    # finetune.py: the same, but --seed 404 --epochs 300
    qrnn-ptb) CORPUS=ptb; SETTING=(--arch awd_qrnn_lm "${NTASGD[@]}" --clip-norm 0.2
              --batch-size 20 --seed 9001 --max-epoch 550)
              [[ $STAGE == finetune ]] && SETTING+=(--seed 404 --max-epoch 300) ;;
    # reference: --model QRNN --epochs 500 --clip 0.25 --dropouti 0.4 --dropouth 0.2
    #   --nhid 1550 --nlayers 4 --seed 4002 --wdrop 0.1 --batch_size 40
    qrnn-wikitext-2) CORPUS=wikitext-2; SETTING=(--arch awd_qrnn_lm_wt2 "${NTASGD[@]}"
              --clip-norm 0.25 --batch-size 40 --seed 4002 --max-epoch 500) ;;
    qrnn-wikitext-103) CORPUS=wikitext-103; SETTING=(--arch awd_qrnn_lm_wt103 "${WT103[@]}") ;;
    lstm-wikitext-103) CORPUS=wikitext-103; SETTING=(--arch awd_lstm_lm_wt103 "${WT103[@]}") ;;
    *) echo "error: unknown recipe '$RECIPE': usage: $0 {lstm|qrnn}-{ptb|wikitext-2|wikitext-103}" \
            "or {lstm|qrnn}-{ptb|wikitext-2}-finetune [DATA] [SAVE_DIR] [fairseq-train options...]" >&2
       exit 1 ;;
esac
case "$CORPUS" in
    ptb) CACHE=(--cache-window 500 --cache-theta 1.0 --cache-lambda 0.1) ;;
    wikitext-2) CACHE=(--cache-window 3785 --cache-theta 0.662 --cache-lambda 0.1279) ;;
    *) CACHE=() ;;
esac
DATA=${2:-data-bin/$CORPUS}
SAVE_DIR=${3:-checkpoints/$RECIPE}
if [[ $STAGE == finetune ]]; then
    if [[ ${#CACHE[@]} == 0 ]]; then
        echo "error: the fine-tuning stage is for the PTB and WikiText-2 recipes" >&2
        exit 1
    fi
    BASE_CHECKPOINT=${BASE_CHECKPOINT:-checkpoints/$RECIPE/checkpoint_best.pt}
    SAVE_DIR=${3:-checkpoints/$RECIPE-finetune}
    if [[ ! -f "$BASE_CHECKPOINT" ]]; then
        echo "error: no $BASE_CHECKPOINT to fine-tune: run the $RECIPE recipe first or set" \
             "BASE_CHECKPOINT" >&2
        exit 1
    fi
    # finetune.py: ASGD from the first step, validation on the averaged weights, stop when
    # the non-monotone condition fires (the optimizer, data order and meters start anew).
    SETTING+=(--average-from-start --restore-file "$BASE_CHECKPOINT" --reset-optimizer
              --reset-dataloader --reset-meters --reset-lr-scheduler)
fi
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
USER_DIR="$REPO/fairseq_awd"

if [[ ! -d "$DATA" ]]; then
    "${PYTHON:-python}" "$REPO/scripts/prepare_data.py" --corpus "$CORPUS" --dest "$DATA"
fi

fairseq-train "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling "${SETTING[@]}" \
    --valid-batch-size 10 --test-batch-size 1 \
    --save-dir "$SAVE_DIR" --keep-last-epochs 1 --log-format simple --log-interval 200 \
    "${@:4}"

# --softmax-batch bounds eval-lm's memory: full-vocabulary log-probabilities of 267k words
# take about 1 GB per 1000 positions
for subset in valid test; do
    fairseq-eval-lm "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling \
        --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset" --softmax-batch 1024
done
# The fine-tuned model with the reference's cache pointer (pointer.py: one stream per split)
if [[ $STAGE == finetune ]]; then
    for subset in valid test; do
        fairseq-awd-eval "$DATA" --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset" \
            --valid-batch-size 1 "${CACHE[@]}"
    done
fi
