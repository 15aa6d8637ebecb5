#!/usr/bin/env bash
# The Fashion-MNIST study (experiments/fashion_mnist/README.md), run as written here on 2 CPU
# cores, one run after another:  bash experiments/fashion_mnist/run_study.sh /work/study
# Every run is `experiment=fashion_mnist_cpu` (Lite0 at 64 px, batch 64, AdamW, cosine, label
# smoothing 0.1) with a 5 % validation split (3,000 images: enough to pick a checkpoint, and
# cheaper to evaluate every epoch than 6,000); the 10k test set is only read at the end.
# A file named PAUSE in the output folder holds the queue between runs (for timing other jobs).
set -euo pipefail
out=${1:-logs/fashion_mnist_study}
mkdir -p "$out"
common=(experiment=fashion_mnist_cpu data.val_fraction=0.05 paths.log_dir="$out" logger=csv)
run() {  # run NAME OVERRIDES...: a completed NAME returns its result at once (resume=auto)
    local name=$1; shift
    while [ -e "$out/PAUSE" ]; do sleep 5; done
    python train.py "${common[@]}" run_name="$name" "$@" > "$out/$name.log" 2>&1 || echo "$name failed: see $out/$name.log"
    tail -n 1 "$out/$name.log"
}
# the comparisons the targets rest on first, then the all-label run, then the other strategies
run b0.01_full data.train_fraction=0.01 trainer.max_epochs=15
run b0.01_scratch data.train_fraction=0.01 trainer.max_epochs=15 model.weights=null optim.lr=3e-3
run b0.1_full data.train_fraction=0.1 trainer.max_epochs=8
run b0.1_scratch data.train_fraction=0.1 trainer.max_epochs=8 model.weights=null optim.lr=3e-3
# 96 px: chosen on the validation split of the 10 % run (val 0.893 against 0.861 at 64 px)
run b0.1_full_96px data.train_fraction=0.1 trainer.max_epochs=8 data.image_size=96
# all labels: the pretrained full fine-tune at 96 px, within an hour of training on 2 cores
run b1.0_full_96px data.train_fraction=1.0 trainer.max_epochs=3 data.image_size=96
for budget in 0.01 0.1; do
    epochs=$([ "$budget" = 0.01 ] && echo 15 || echo 8)
    run "b${budget}_linear_probe" data.train_fraction=$budget trainer.max_epochs=$epochs finetune=linear_probe optim.lr=1e-2
    run "b${budget}_lora" data.train_fraction=$budget trainer.max_epochs=$epochs finetune=lora optim.lr=3e-3
    run "b${budget}_layer_decay" data.train_fraction=$budget trainer.max_epochs=$epochs finetune=layer_decay
done
