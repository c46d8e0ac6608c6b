#!/usr/bin/env bash
# The device check of the pretraining step, unattended in one call (about 7 minutes on one
# H100/H200): BERT-base, seq 128, bf16, the same examples for every variant, printing real
# tokens/s, MFU against the device's dense peak, peak memory and the loss after the same steps:
#   naive             HF BertForPreTraining + Accelerate loop (full MLM head, dynamic padding,
#                     DataLoader workers), the baseline
#   ours              pipeline.step.train_step, padded to buckets, eager
#   padfree           the same on padding-free streams (varlen attention)
#   compiled          ours under torch.compile, static shapes
#   padfree-compiled  padding-free under torch.compile
# then the CLI's dry run and a real `accelerate launch` of the pretrain loop (DDP, 1 GPU).
#
#   benchmarks/prepare_gpu.sh            here, once: builds .bench/shards (real text, 32K vocab)
#   benchmarks/gpu.sh [--data SHARDS]    on the GPU machine, carrying .bench/shards; figures go to
#                                        stdout and, when $OUT is set, to $OUT/gpu.log + metrics
#   benchmarks/gpu.sh --smoke [--data S] tiny model, a few steps, CPU: the same code paths (tests)
set -euo pipefail
cd "$(dirname "$0")/.."
smoke=0 data=""
while [ $# -gt 0 ]; do
    case $1 in
        --smoke) smoke=1; shift ;;
        --data) data=$2; shift 2 ;;
        *) echo "gpu.sh: unknown option $1 (use --smoke, --data SHARDS)" >&2; exit 2 ;;
    esac
done
PY=${PYTHON:-python3}
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then  # optional extra wheels, carried as .whl/
    $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/kowiki-site .whl/*.whl
    export PYTHONPATH=/tmp/kowiki-site${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=true
[ -z "$data" ] && [ -f .bench/shards/manifest.json ] && data=.bench/shards
log=/dev/null; [ -n "${OUT:-}" ] && mkdir -p "$OUT" && log=$OUT/gpu.log
if [ "$smoke" = 1 ]; then
    data_args=(); [ -n "$data" ] && data_args=(--data "$data")
    $PY benchmarks/pretrain.py "${data_args[@]}" --variants naive,ours,padfree,compiled,padfree-compiled --size tiny \
        --device cpu --batch 8 --steps 3 --warmup 1 --log-every 2 --workers 1 | tee -a "$log"
    exit 0
fi
# Fail fast, in one line, on a machine that lacks something (instead of minutes into the run).
$PY - "$data" <<'PYEOF' || exit 2
import importlib, os, sys
missing = [m for m in ("torch", "transformers", "accelerate", "pyarrow", "tokenizers", "safetensors", "yaml", "numpy")
           if importlib.util.find_spec(m) is None]
data = sys.argv[1]
problem = (f"missing Python packages: {', '.join(missing)} (carry wheels in .whl/)" if missing else
           "no shards: run benchmarks/prepare_gpu.sh here and carry .bench/shards" if not data or not os.path.exists(os.path.join(data, "manifest.json")) else
           None)
if problem is None:
    import torch
    if not torch.cuda.is_available():
        problem = "no CUDA device visible to torch (use --smoke for the CPU code paths)"
if problem:
    sys.exit(f"gpu.sh: {problem}")
PYEOF
{
$PY - <<'PYEOF'
import torch, transformers, accelerate
from pipeline.unpadded import VARLEN
print(f"device: {torch.cuda.get_device_name()}, {torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB; "
      f"torch {torch.__version__}, transformers {transformers.__version__}, accelerate {accelerate.__version__}; "
      f"varlen_attn {'available' if VARLEN else 'absent (padding-free uses the reference attention)'}")
PYEOF
$PY benchmarks/pretrain.py --data "$data" --variants naive,ours,padfree,compiled,padfree-compiled --size base --bf16 \
    --batch 256 --steps 30 --warmup 10 --log-every 10 --lr 5e-4
$PY -m pipeline.cli pretrain --data "$data" --output /tmp/kowiki-gpu-run --dry-run --config pipeline/configs/pretrain_base.yaml
$PY -m accelerate.commands.launch --config_file accelerate_configs/multi_gpu.yaml --num_processes 1 -m pipeline.pretrain \
    --data "$data" --output /tmp/kowiki-gpu-run --config pipeline/configs/pretrain_base.yaml \
    --resume never --max-steps 60 --global-batch-size 256 --micro-batch-size 256 --train.log_every 20 \
    --eval.every 0 --eval.batches 4 --save-every 0 --checkpoint.export_hf false
$PY - <<'PYEOF'
import json
m = json.load(open("/tmp/kowiki-gpu-run/metrics.json"))
print("real loop, last 20 steps: " + ", ".join(f"{k} {v:.4g}" for k, v in m["train"].items()))
print(f"real loop: compile {m.get('compile')}, evaluation/checkpoint seconds {m.get('seconds')}")
PYEOF
} 2>&1 | tee -a "$log"
[ -n "${OUT:-}" ] && cp /tmp/kowiki-gpu-run/metrics.json "$OUT/real_loop_metrics.json" || true
