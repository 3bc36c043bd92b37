#!/usr/bin/env bash
# Reproduces the shipped phantom models and their evaluation (see RECIPE.md for what it printed).
# Usage: bash sample_data/models/make_models.sh [WORK_DIR]   (about 30 min on 2 CPU cores)
set -euo pipefail
repo="$(cd "$(dirname "$0")/../.." && pwd)"
work="${1:-runs}"
mkdir -p "$work"

# training data: 40 phantoms, seeds 1000-1039 (random orientation, spacing, obliquity)
medseg phantom "$work/train" -n 40 --seed 1000 > /dev/null

# both models train at once, one CPU thread each
medseg train "$repo/configs/models/phantom-unet3d.yaml" --data "$work/train" --out "$work/unet3d" \
    --steps 2500 --batch-size 2 --seed 0 --threads 1 --val-fraction 0 > "$work/unet3d.log" 2>&1 &
medseg train "$repo/configs/models/phantom-unet2d.yaml" --data "$work/train" --out "$work/unet2d" \
    --steps 2000 --batch-size 12 --seed 0 --threads 1 --val-fraction 0 > "$work/unet2d.log" 2>&1 &
wait

# evaluation: 10 fresh phantoms, seeds 9000-9009, never used in training
medseg phantom "$work/eval" -n 10 --seed 9000 > /dev/null
for name in unet3d unet2d; do
    spec="$work/phantom-$name.yaml"
    sed "s#path: ../../sample_data/models/phantom-$name.pt#path: $(cd "$work" && pwd)/$name/model.pt#" \
        "$repo/configs/models/phantom-$name.yaml" > "$spec"
    mkdir -p "$work/pred-$name"
    for f in "$work"/eval/images/*.nii.gz; do
        medseg infer "$f" -o "$work/pred-$name/$(basename "$f" .nii.gz)_seg.nii.gz" --model "$spec" -q
    done
    medseg evaluate "$work/pred-$name" "$work/eval/labels" --model "$spec" --csv "$work/eval-$name.csv"
done
