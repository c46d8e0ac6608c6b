#!/usr/bin/env bash
# The device check of the pretraining step, unattended in one go (under 8 minutes on one H100 or
# H200): BERT-base, seq 128, bf16, the same data for every variant, printing tokens/s, MFU
# against the device's dense peak, peak memory and the loss after the same number of steps for
#   naive    HF BertForPreTraining + Accelerate loop (full MLM head, dynamic padding)
#   ours     pipeline.step.train_step, eager
#   compiled the same under torch.compile
# then the pretrain CLI's own dry run and a 60-step run of the real loop (bf16, compiled).
#
#   benchmarks/gpu.sh [--data SHARDS_DIR]   on the GPU machine (default data: .bench/shards, else
#                                           shards built from the embedded sample)
#   benchmarks/gpu.sh --smoke               tiny model, a few steps, CPU: the same code paths (tests)
#
# A bare CUDA image with torch, transformers and accelerate needs nothing else when the shards
# are carried (.bench/); wheels in .whl/ (datasets, mwparserfromhell for building data) are
# installed first when present.
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0 data=""
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1; shift ;;
        --data) data=$2; shift 2 ;;
        *) echo "gpu.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kowiki-site .whl/*.whl
    export PYTHONPATH=/tmp/kowiki-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
[ -z "$data" ] && [ -f .bench/shards/manifest.json ] && data=.bench/shards
data_args=(); [ -n "$data" ] && data_args=(--data "$data")
if [ "$smoke" = 1 ]; then
    $PY benchmarks/pretrain.py "${data_args[@]}" --variants naive,ours,compiled --size tiny --device cpu \
        --batch 8 --steps 3 --warmup 1 --log-every 2
    exit 0
fi
$PY - <<'PYEOF'
import torch
print(f"device: {torch.cuda.get_device_name()}, torch {torch.__version__}, "
      f"{torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB")
PYEOF
$PY benchmarks/pretrain.py "${data_args[@]}" --variants naive,ours,compiled --size base --bf16 \
    --batch 256 --steps 40 --warmup 15 --log-every 10 --lr 5e-4
if [ -n "$data" ]; then
    $PY -m pipeline.cli pretrain --data "$data" --output /tmp/kowiki-gpu-run --dry-run --config pipeline/configs/pretrain_base.yaml
    $PY -m pipeline.cli pretrain --data "$data" --output /tmp/kowiki-gpu-run --config pipeline/configs/pretrain_base.yaml \
        --resume never --max-steps 60 --global-batch-size 256 --micro-batch-size 256 --train.log_every 20 \
        --eval.every 0 --eval.batches 4 --save-every 0 --checkpoint.export_hf false
    $PY - <<'PYEOF'
import json
m = json.load(open("/tmp/kowiki-gpu-run/metrics.json"))["train"]
print("real loop, last 20 steps: " + ", ".join(f"{k} {v:.4g}" for k, v in m.items()))
PYEOF
fi
