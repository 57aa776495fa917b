#!/usr/bin/env bash
# Quick start (`make demo`): binarize the shipped public-domain sample (King James Version,
# examples/data/kjv), train a small AWD-LSTM for a few minutes on CPU with fairseq-train,
# report validation and test perplexity with fairseq-eval-lm, and sample a continuation.
# Usage: scripts/demo.sh [OUTPUT_DIR]   (default demo-output; it is replaced)
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${1:-demo-output}
SAMPLE=examples/data/kjv
DATA=$OUT/data-bin
CKPT=$OUT/checkpoints
PROMPT=${PROMPT:-"and god said unto moses"}
rm -rf "$OUT" && mkdir -p "$OUT"

echo "== 1/4 binarize $SAMPLE"
fairseq-preprocess --only-source --trainpref $SAMPLE/train.txt --validpref $SAMPLE/valid.txt \
    --testpref $SAMPLE/test.txt --destdir "$DATA" --padding-factor 1 --workers 2 \
    > "$OUT/preprocess.log" 2>&1

echo "== 2/4 train a small AWD-LSTM (about 4 minutes; log in $OUT/train.log)"
fairseq-train "$DATA" --user-dir fairseq_awd --task awd_language_modeling \
    --arch awd_lstm_lm --decoder-embed-dim 128 --decoder-hidden-size 256 --decoder-layers 3 \
    --dropout 0.2 --dropouth 0.1 --dropouti 0.2 --dropoute 0.05 --wdrop 0.2 \
    --criterion awd_cross_entropy --alpha 2 --beta 1 \
    --optimizer ntasgd --nonmono 5 --weight-decay 1.2e-6 --lr 30 --clip-norm 0.25 \
    --lr-scheduler divide_at_epochs --batch-size 20 --bptt 35 --valid-batch-size 10 \
    --max-epoch 12 --stop-time-hours 0.06 --seed 141 --cpu --save-dir "$CKPT" \
    --no-epoch-checkpoints --log-format simple --log-interval 50 --no-progress-bar \
    > "$OUT/train.log" 2>&1
grep -E "\| valid \|" "$OUT/train.log" | sed -E 's/.*(epoch [0-9]+).*\| ppl ([0-9.]+).*/   \1: valid ppl \2/'

echo "== 3/4 evaluate checkpoint_best.pt with fairseq-eval-lm"
for split in valid test; do
    fairseq-eval-lm "$DATA" --user-dir fairseq_awd --task awd_language_modeling \
        --path "$CKPT/checkpoint_best.pt" --gen-subset $split --cpu > "$OUT/eval_$split.log" 2>&1
    echo "   $split: $(grep -o 'Perplexity: [0-9.]*' "$OUT/eval_$split.log")"
done

echo "== 4/4 sample a continuation of: \"$PROMPT\""
echo "$PROMPT" | fairseq-interactive "$DATA" --user-dir fairseq_awd \
    --task awd_language_modeling --path "$CKPT/checkpoint_best.pt" --cpu --sampling \
    --sampling-topk 10 --beam 1 --min-len 12 --max-len-b 30 --seed 1 2> "$OUT/sample.log" \
    | grep '^H-' | cut -f3 | sed 's/^/   /'
