#!/usr/bin/env bash
# Train and evaluate the AWD language models with the command lines of the reference
# implementation's README (salesforce/awd-lstm-lm, PyTorch >= 0.4). Meant for a GPU
# (fairseq uses CUDA when present).
#
# Usage: scripts/recipes/awd.sh RECIPE [DATA] [SAVE_DIR] [fairseq-train options...]
#   RECIPE    lstm-ptb, lstm-wikitext-2, qrnn-ptb, qrnn-wikitext-2, qrnn-wikitext-103,
#             lstm-wikitext-103 (the QRNN WikiText-103 command with LSTM layers), or the
#             mixture of softmaxes lstm-ptb-mos, lstm-wikitext-2-mos, or the character-level
#             lstm-ptb-char, qrnn-ptb-char, lstm-enwik8, qrnn-enwik8; for the word-level
#             PTB and WikiText-2 ones, RECIPE-finetune is the fine-tuning stage (the
#             reference's finetune.py: ntasgd --average-from-start, restarted from
#             checkpoints/RECIPE/checkpoint_best.pt, or $BASE_CHECKPOINT), which ends when
#             the non-monotone condition fires and is then scored with the cache pointer (the
#             MoS ones: with dynamic evaluation tuned on valid)
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
# Mixture of softmaxes (Yang et al. 2017), valid / test:
#                      training           + fine-tuning      + dynamic evaluation
#   lstm-ptb-mos       58.34 / 56.18      56.83 / 54.64      49.03 / 48.43  (its README, PyTorch
#                                         (paper 56.54/54.44) (paper 48.33/47.69)  0.4 code)
#   lstm-wikitext-2-mos                   (paper 63.88/61.45) (paper 42.41/40.68)
# For the MoS recipes the fine-tuned model is scored with dynamic evaluation instead of the
# cache, its rate and decay tuned on valid: the MoS dynamiceval.py (--lamb 0.075, lr 0.002,
# epsilon 0.001) uses the old hyperparameter scaling (root of summed squared gradients),
# which on PTB is about the default rate and epsilon here divided by sqrt(#batches).
# The cache uses pointer.py's values: PTB --cache-window 500 --cache-theta 1.0
# --cache-lambda 0.1; WikiText-2 --cache-window 3785 --cache-theta 0.662 --cache-lambda
# 0.1279. Dynamic evaluation (Krause et al. 2017: 51.6 / 51.1 on PTB, 46.4 / 44.3 on
# WikiText-2 with the fine-tuned AWD-LSTM) is `fairseq-awd-eval ... --dynamic-eval`.
# Character level (Merity et al. 2018), test bits per character, counting line ends:
#   lstm-ptb-char      1.175 (3 layers, 13.8M parameters)
#   qrnn-ptb-char      1.187 (6 layers, 13.8M parameters)
#   lstm-enwik8        1.232 (3 layers, 47M parameters)
#   qrnn-enwik8        no published command or figure found (see the branch below)
# These recipes score valid and test with fairseq-awd-eval, which adds bits per character
# without the line ends to fairseq-eval-lm's line.
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
# The character-level commands of the reference README (Merity et al. 2018), shared part:
# --alpha 0 --beta 0 --dropoute 0 --wdecay 1.2e-6 --batch_size 128 --optimizer adam (clip
# 0.25 and seed 1111 are the reference's defaults). fairseq's adam applies the weight decay
# decoupled (AdamW form), the reference's torch.optim.Adam as an L2 term in the gradient; at
# 1.2e-6 both are tiny.
CHAR=(--criterion awd_cross_entropy --alpha 0 --beta 0 --optimizer adam --weight-decay 1.2e-6
      --clip-norm 0.25 --lr-scheduler divide_at_epochs --batch-size 128 --dropoute 0
      --seed 1111)
# PTB characters: --epochs 500 --nlayers 3 --emsize 200 --nhid 1000 --dropouth 0.25
# --dropouti 0.1 --dropout 0.1 --wdrop 0.5 --bptt 150 --lr 2e-3 --when 300 400
PTB_CHAR=(--decoder-embed-dim 200 --decoder-hidden-size 1000 --dropouth 0.25 --dropouti 0.1
          --dropout 0.1 --wdrop 0.5 --bptt 150 --lr 2e-3 --when 300,400 --max-epoch 500)
# enwik8: --epochs 50 --nlayers 3 --emsize 400 --nhid 1840 --dropouth 0.1 --dropouti 0.1
# --dropout 0.4 --wdrop 0.2 --bptt 200 --lr 1e-3 --when 25 35
ENWIK8=(--decoder-embed-dim 400 --decoder-hidden-size 1840 --dropouth 0.1 --dropouti 0.1
        --dropout 0.4 --wdrop 0.2 --bptt 200 --lr 1e-3 --when 25,35 --max-epoch 50)
EVALUATE=fairseq-eval-lm
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
    # The mixture of softmaxes (Yang et al. 2017; github.com/zihangdai/mos README):
    # main.py --dropouti 0.4 --dropoutl 0.29 --dropouth 0.225 --seed 28 --batch_size 12
    #   --lr 20.0 --epoch 1000 --nhid 960 --nhidlast 620 --emsize 280 --n_experts 15
    # finetune.py: the same with --lr 25.0 (the architecture holds the model part)
    lstm-ptb-mos) CORPUS=ptb; SETTING=(--arch awd_lstm_lm_mos "${NTASGD[@]}" --lr 20
              --clip-norm 0.25 --batch-size 12 --seed 28 --max-epoch 1000)
              [[ $STAGE == finetune ]] && SETTING+=(--lr 25) ;;
    # main.py --epochs 1000 --dropouth 0.2 --seed 1882 --n_experts 15 --nhid 1150
    #   --nhidlast 650 --emsize 300 --batch_size 15 --lr 15.0 --dropoutl 0.29
    #   --small_batch_size 5 --max_seq_len_delta 20 --dropouti 0.55; finetune.py: --lr 20.0
    lstm-wikitext-2-mos) CORPUS=wikitext-2; SETTING=(--arch awd_lstm_lm_mos_wt2 "${NTASGD[@]}"
              --lr 15 --clip-norm 0.25 --batch-size 15 --seed 1882 --max-epoch 1000)
              [[ $STAGE == finetune ]] && SETTING+=(--lr 20) ;;
    qrnn-wikitext-103) CORPUS=wikitext-103; SETTING=(--arch awd_qrnn_lm_wt103 "${WT103[@]}") ;;
    lstm-wikitext-103) CORPUS=wikitext-103; SETTING=(--arch awd_lstm_lm_wt103 "${WT103[@]}") ;;
    lstm-ptb-char) CORPUS=ptb-char; EVALUATE=fairseq-awd-eval
              SETTING=(--arch awd_lstm_lm "${CHAR[@]}" "${PTB_CHAR[@]}" --decoder-layers 3) ;;
    lstm-enwik8) CORPUS=enwik8; EVALUATE=fairseq-awd-eval
              SETTING=(--arch awd_lstm_lm "${CHAR[@]}" "${ENWIK8[@]}" --decoder-layers 3) ;;
    # The reference README has no QRNN command at the character level: these are its LSTM
    # commands with QRNN layers (main.py --model QRNN: window 2 in the first layer, --wdrop
    # on the gate projections). PTB: the paper's 6 layers, which at 1000 units give its
    # 13.8M parameters; enwik8: 4 layers (awd_qrnn_lm's, as the reference's word-level QRNN
    # commands), 27M parameters, a depth not taken from a published command.
    qrnn-ptb-char) CORPUS=ptb-char; EVALUATE=fairseq-awd-eval
              SETTING=(--arch awd_qrnn_lm "${CHAR[@]}" "${PTB_CHAR[@]}" --decoder-layers 6) ;;
    qrnn-enwik8) CORPUS=enwik8; EVALUATE=fairseq-awd-eval
              SETTING=(--arch awd_qrnn_lm "${CHAR[@]}" "${ENWIK8[@]}" --decoder-layers 4) ;;
    *) echo "error: unknown recipe '$RECIPE': usage: $0 {lstm|qrnn}-{ptb|wikitext-2|wikitext-103}" \
            "or lstm-{ptb|wikitext-2}-mos, each of the PTB and WikiText-2 ones also with" \
            "-finetune, or {lstm|qrnn}-{ptb-char|enwik8} [DATA] [SAVE_DIR]" \
            "[fairseq-train options...]" >&2
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
    "$EVALUATE" "$DATA" --user-dir "$USER_DIR" --task awd_language_modeling \
        --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset" --softmax-batch 1024
done
# The fine-tuned MoS model with dynamic evaluation, tuned on valid
if [[ $STAGE == finetune && $RECIPE == *-mos ]]; then
    fairseq-awd-eval "$DATA" --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset test \
        --valid-batch-size 1 --test-batch-size 1 --dynamic-eval --dynamic-lr 2e-5,5e-5,1e-4 \
        --dynamic-decay 1e-3,2e-3,5e-3 --tune-subset valid
# The fine-tuned model with the reference's cache pointer (pointer.py: one stream per split)
elif [[ $STAGE == finetune ]]; then
    for subset in valid test; do
        fairseq-awd-eval "$DATA" --path "$SAVE_DIR/checkpoint_best.pt" --gen-subset "$subset" \
            --valid-batch-size 1 "${CACHE[@]}"
    done
fi
