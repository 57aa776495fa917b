#!/usr/bin/env bash
# GPU acceptance run for fairseq_awd, in one command:
#
#   bash scripts/gpu_check.sh [--out DIR] [--data PTB_DATA_BIN] [--wheels DIR] [--cpu-dry-run]
#
# On a machine whose python3 already has a CUDA torch and cupy (cupy-cuda12x or -13x) it
#   1. installs fairseq-fixed (built there, from its sdist, against the numpy present) and the
#      plugin with `pip --no-build-isolation`, under a constraints file that pins the torch,
#      numpy and cupy already installed, so none of them is replaced or downgraded;
#   2. runs the CUDA tests (`pytest -m cuda`: ForgetMult kernels, weight drop on cuDNN,
#      NT-ASGD averaging under fp16/bf16 with CUDA masters), then the checks of the GPU path
#      that also run on a CPU (the kernel compiled by NVRTC for every dtype and architecture,
#      its source executed on the host, device placement);
#   3. runs `benchmark_qrnn.py forget-mult` and `layer`;
#   4. trains 200 updates of the paper's PTB AWD-LSTM in fp32 and in bf16, fairseq-train
#      against the plain PyTorch loop (`benchmark_overhead.py --device cuda [--bf16]`);
# and writes each step's table or log to DIR (default: gpu-check/) and a summary.md.
#
# No network is needed. Packages python3 lacks are installed from --wheels DIR
# (pip --no-index --find-links DIR). On the H200 image (torch 2.11, cupy-cuda13x, numpy 2)
# these are: fairseq-fixed==0.12.3.1 (sdist), hydra-core==1.3.2, omegaconf==2.3.0,
# antlr4-python3-runtime==4.9.3 (sdist), bitarray, cffi, sacremoses, subword-nmt, mock,
# and, for the NVRTC compile test (skipped without them), cuda-bindings and cuda-pathfinder;
# `pip download -d DIR NAME==VERSION` on a networked machine fetches them (binary wheels for
# the target's Python: --python-version 3.12 --only-binary=:all: for bitarray and cffi).
# --data: a binarized PTB (scripts/prepare_data.py ptb); without it, step 4 is skipped.
#
# --cpu-dry-run: the same steps on the CPU, as CI runs them so that this script cannot rot:
# pip's --dry-run instead of the install (it must not plan to replace torch, numpy or cupy),
# the CUDA tests reported as skipped, the ForgetMult benchmark skipped, `layer` at one tiny
# size on the CPU, and 4 updates of a small model on --data (or on a corpus made here).
set -euo pipefail

OUT=gpu-check DATA="" WHEELS="" DRY=0
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT=$2; shift 2 ;;
        --data) DATA=$2; shift 2 ;;
        --wheels) WHEELS=$2; shift 2 ;;
        --cpu-dry-run) DRY=1; shift ;;
        *) echo "gpu_check.sh: unknown option $1 (see the header of $0)" >&2; exit 2 ;;
    esac
done
REPO=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
SUMMARY=$OUT/summary.md
: > "$SUMMARY"
step() { STEP=$1; echo "## $1" | tee -a "$SUMMARY"; }
note() { echo "$1" | tee -a "$SUMMARY"; }
# `cmd > LOG 2>&1 || failed LOG`: name the step and show the end of its log, then stop
failed() {
    echo "gpu_check.sh: step '$STEP' failed; the end of $1:" >&2
    tail -n 40 "$1" >&2
    exit 1
}

step "environment"
"$PY" - <<'EOF' | tee "$OUT/env.txt" | tee -a "$SUMMARY"
import importlib.util, numpy, torch
cupy = importlib.util.find_spec("cupy") and __import__("cupy").__version__
gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "none"
print(f"torch {torch.__version__} (CUDA {torch.version.cuda}), numpy {numpy.__version__}, "
      f"cupy {cupy or 'not installed'}, GPU {gpu}")
EOF
if [ $DRY = 0 ] && ! "$PY" -c "import torch, sys; sys.exit(not torch.cuda.is_available())"; then
    echo "gpu_check.sh: torch sees no GPU; run with --cpu-dry-run on a CPU machine" >&2
    exit 1
fi

step "install"
# the torch, numpy and cupy installed, as pip constraints
pinned() { "$PY" -m pip freeze 2>/dev/null | grep -iE '^(torch|numpy|cupy-cuda[0-9]+x)==' || true; }
pinned > "$OUT/constraints.txt"
PIP=("$PY" -m pip install --no-build-isolation --no-cache-dir -c "$OUT/constraints.txt")
[ -n "$WHEELS" ] && PIP+=(--no-index --find-links "$WHEELS")
if [ $DRY = 1 ]; then
    (cd "$REPO" && "${PIP[@]}" --dry-run -e . ) > "$OUT/install.log" 2>&1 \
        || failed "$OUT/install.log"
    if grep -iE '^Would install.* (torch|numpy|cupy[a-z0-9-]*)-[0-9]' "$OUT/install.log"; then
        echo "gpu_check.sh: the install would replace torch, numpy or cupy" >&2
        exit 1
    fi
    note "pip --dry-run: $(grep -i '^Would install' "$OUT/install.log" || echo 'nothing to install')"
else
    start=$SECONDS
    (cd "$REPO" && CFLAGS=-g0 "${PIP[@]}" -e . ) > "$OUT/install.log" 2>&1 \
        || failed "$OUT/install.log"
    note "installed in $((SECONDS - start)) s; $(tail -1 "$OUT/install.log")"
fi
pinned | diff "$OUT/constraints.txt" - > /dev/null \
    || { echo "gpu_check.sh: torch, numpy or cupy changed in the install" >&2; exit 1; }

step "CUDA tests (pytest -m cuda)"
# a failing test is reported and the run goes on (the benchmarks are still worth having);
# the script's exit status is then 1
STATUS=0
(cd "$REPO" && "$PY" -m pytest -q -m cuda -rs -p no:cacheprovider tests) > "$OUT/tests.log" 2>&1 \
    || { STATUS=1; note "CUDA tests FAILED: see $OUT/tests.log"; }
note "$(tail -1 "$OUT/tests.log")"

step "the GPU path's CPU checks (NVRTC compile, the kernel on the host, device placement)"
# the same tests the suite runs on a CPU machine; here against the installed CUDA toolchain
(cd "$REPO" && "$PY" -m pytest -q -rs -p no:cacheprovider tests/test_forget_mult_cuda_source.py \
    tests/test_device_placement.py) > "$OUT/cpu_checks.log" 2>&1 \
    || { STATUS=1; note "CPU checks FAILED: see $OUT/cpu_checks.log"; }
note "$(tail -1 "$OUT/cpu_checks.log")"

step "benchmark_qrnn.py forget-mult"
if [ $DRY = 1 ]; then
    note "skipped (CUDA)"
else
    "$PY" "$REPO/scripts/benchmark_qrnn.py" forget-mult --device cuda > "$OUT/forget_mult.md" \
        2> "$OUT/forget_mult.log" || failed "$OUT/forget_mult.log"
    cat "$OUT/forget_mult.md" >> "$SUMMARY"
fi

step "benchmark_qrnn.py layer"
if [ $DRY = 1 ]; then
    LAYER=(--device cpu --batches 2 --seqs 8 --hiddens 16 --repeats 1)
else
    LAYER=(--device cuda)
fi
"$PY" "$REPO/scripts/benchmark_qrnn.py" layer "${LAYER[@]}" > "$OUT/layer.md" 2> "$OUT/layer.log" \
    || failed "$OUT/layer.log"
cat "$OUT/layer.md" >> "$SUMMARY"

step "PTB training: fairseq-train against the plain loop, fp32 and bf16"
if [ $DRY = 1 ]; then
    if [ -z "$DATA" ]; then  # a small corpus, binarized here
        DATA=$OUT/data-bin
        "$PY" -c "
import random; random.seed(0); words = [f'w{i}' for i in range(50)]
for split, n in (('train', 300), ('valid', 20)):
    with open('$OUT/' + split + '.txt', 'w') as f:
        f.writelines(' '.join(random.choices(words, k=12)) + '\n' for _ in range(n))"
        "$(dirname "$PY")/fairseq-preprocess" --only-source --trainpref "$OUT/train.txt" \
            --validpref "$OUT/valid.txt" --destdir "$DATA" > "$OUT/preprocess.log" 2>&1 \
            || failed "$OUT/preprocess.log"
    fi
    TRAIN=(--device cpu --updates 4 --warmup 1 --repeats 1 --batch-size 4 --bptt 8
           --model-args "--decoder-embed-dim 16 --decoder-hidden-size 16 --decoder-layers 2")
elif [ -n "$DATA" ]; then
    TRAIN=(--device cuda --updates 200 --warmup 20 --repeats 1)
fi
if [ -z "$DATA" ]; then
    note "skipped (no --data)"
else
    for precision in fp32 bf16; do
        flag=(); [ $precision = bf16 ] && flag=(--bf16)
        "$PY" "$REPO/scripts/benchmark_overhead.py" --data "$DATA" "${TRAIN[@]}" "${flag[@]}" \
            --out "$OUT/train_$precision.json" > "$OUT/train_$precision.md" \
            2> "$OUT/train_$precision.log" || failed "$OUT/train_$precision.log"
        note "### $precision"
        sed -n '/^Updates/,/^Overhead/p' "$OUT/train_$precision.md" >> "$SUMMARY"
    done
fi
note "gpu_check.sh: done; tables in $OUT"
exit $STATUS
