#!/usr/bin/env bash
# Every GPU check of xtune in one command, on a CUDA machine:
#   1. short real fits through trainer=gpu: bf16 autocast, + channels_last, + torch.compile
#      (each must finish, reach its accuracy, and the compiled checkpoint must evaluate);
#   2. the bench grid (xtune against the plain PyTorch loop, which follows timm's benchmark.py
#      train loop: synthetic batch on the device, autocast, same optimizer) for resnet50,
#      convnext_tiny and vit_base_patch16_224: images/s, xtune/plain, peak memory, MFU.
# Results land in $OUT (default gpu_results/); commit them to experiments/hardware_comparison/
# with the date and the GPU.
#
#   bash scripts/gpu_check.sh                      # everything (~10 min on an H100/H200)
#   QUICK=1 bash scripts/gpu_check.sh              # a smaller bench grid
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu_results}
PY=${PYTHON:-python}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1}

$PY - <<'PY' | tee "$OUT/environment.txt"
import torch, timm, pytorch_lightning as pl
assert torch.cuda.is_available(), "no CUDA GPU visible: run this on a GPU machine"
print("gpu:", torch.cuda.get_device_name(), "| bf16:", torch.cuda.is_bf16_supported(),
      "| torch", torch.__version__, "cuda", torch.version.cuda, "| timm", timm.__version__, "| lightning", pl.__version__)
PY

fit() {  # name, overrides...
  local name=$1; shift
  local start=$SECONDS
  $PY train.py experiment=quickstart trainer=gpu logger=csv trainer.max_epochs=5 \
      "hydra.run.dir=$OUT/fit_$name" "$@" > "$OUT/fit_$name.log" 2>&1 \
      || { echo "FAIL fit $name (see $OUT/fit_$name.log)"; return 1; }
  $PY - "$OUT/fit_$name/summary.json" "$name" $((SECONDS - start)) <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"fit {sys.argv[2]:<14} test/acc {s['metrics']['test/acc']:.4f}  {s['precision']:<11} "
      f"{s['throughput']['train_images_per_second']:>9.0f} img/s  {sys.argv[3]} s  on {s['hardware']['device_name']}")
PY
}

fit bf16 hardware.channels_last=false | tee -a "$OUT/fits.txt"
fit bf16_nhwc hardware.channels_last=true | tee -a "$OUT/fits.txt"
fit compiled model.compile=true | tee -a "$OUT/fits.txt"
$PY eval.py "ckpt_path=$OUT/fit_compiled/checkpoints/best.ckpt" trainer=gpu logger=none \
    "hydra.run.dir=$OUT/eval_compiled" > "$OUT/eval_compiled.log" 2>&1 && echo "eval of the compiled checkpoint: ok" | tee -a "$OUT/fits.txt"

if [ -n "${QUICK:-}" ]; then
  GRID=(bench.models=[resnet50,vit_base_patch16_224] bench.batch_sizes=[128] bench.precisions=[bf16-mixed] bench.compile=[false])
else
  GRID=(bench.models=[resnet50,convnext_tiny,vit_base_patch16_224] bench.batch_sizes=[128,256]
        bench.precisions=[32-true,bf16-mixed] bench.compile=[false,true])
fi
$PY bench.py trainer=gpu "${GRID[@]}" bench.repeats=3 bench.steps=30 bench.warmup_steps=10 \
    "hydra.run.dir=$OUT/bench" 2>&1 | tee "$OUT/bench.log" | grep -E '^\|' || true
echo "results in $OUT/ (bench/bench.md, bench/bench.json, bench/bench.png, fits.txt)"
