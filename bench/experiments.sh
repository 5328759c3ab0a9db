#!/usr/bin/env bash
# The experiment table: each run trains on the same 4500 faces (holdout 500, split seed 0)
# with the same seed and a reduced budget of EPOCHS epochs on ONE thread, and writes
# bench/results/exp-<name>.json. Two runs go at a time (one per core). The baseline is
# the first recipe (AdamW, lr 2e-3), so every row changes one thing against exp-base;
# exp-sgd-nesterov is the optimiser the shipped recipe adopted. The retired variants'
# rows (offsets head, hourglass stacks, other losses, one-cycle) need the commit named in
# bench/README.md ("Retired variants").
#   usage: bench/experiments.sh [DATA_DIR]        (default data/train)
#   ONLY="base wide" bench/experiments.sh DATA    runs only the named experiments
set -euo pipefail
cd "$(dirname "$0")/.."
mkdir -p artifacts bench/results
DATA=${1:-data/train}
EPOCHS=${EPOCHS:-8}
JOBS=${JOBS:-2}

run() {  # name, overrides...
    local name=$1; shift
    local sets=(--set "epochs=$EPOCHS" --set threads=1 --set eval_every=2
                --set optimizer=adamw --set lr=0.002)
    for s in "$@"; do sets+=(--set "$s"); done
    python -m facepoints_lib bench "$DATA" --name "exp-$name" --no-fast-train "${sets[@]}" \
        > "artifacts/exp-$name.log" 2>&1 && tail -n 1 "artifacts/exp-$name.log" || echo "exp-$name failed: see artifacts/exp-$name.log"
}

experiments=(   # in order of how much each tells us
    "base"
    "head-regression model.head=regression"
    "res-64 model.image_size=64"
    "no-flip augment.flip_prob=0"
    "no-rotation augment.rotation_deg=0"
    "no-photometric augment.brightness=0 augment.contrast=0 augment.grayscale_prob=0 augment.lowres_prob=0"
    "no-ema ema_decay=0"
    "sgd-nesterov optimizer=sgd lr=0.05"
    "narrow model.stem_width=16 model.widths=(32,64,112,160) model.decoder_width=48"
    "wide model.stem_width=32 model.widths=(64,128,192,320) model.decoder_width=96"
    "res-128 model.image_size=128"
    "deep model.depths=(2,3,3,2)"
    "light-augment augment.rotation_deg=10 augment.scale=0.05 augment.shift=0.03 augment.lowres_prob=0 augment.grayscale_prob=0.1"
    "no-augment augment.flip_prob=0 augment.rotation_deg=0 augment.scale=0 augment.shift=0 augment.brightness=0 augment.contrast=0 augment.grayscale_prob=0 augment.lowres_prob=0"
    "batch-32 batch_size=32 lr=0.0014"
    "heatmap-js heatmap_js=10"
)

for line in "${experiments[@]}"; do
    if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" ${line%% *} "* ]]; then continue; fi
    # shellcheck disable=SC2086
    run $line &
    while [ "$(jobs -rp | wc -l)" -ge "$JOBS" ]; do wait -n; done
done
wait
