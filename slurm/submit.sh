#!/usr/bin/env bash
# Submit the whole pipeline as dependent SLURM jobs: extract -> tokenizer -> shard -> pretrain -> finetune.
#   slurm/submit.sh DUMP WORK_DIR [--nodes N] [--gpus-per-node G] [--array N] [--nsmc-dir DIR]
#                   [--cpu] [--time HH:MM:SS] [--sbatch "OPTIONS"] [-- pretrain options]
# --cpu submits CPU-only jobs (no --gpus), e.g. to try the chain on a CPU partition.
# --sbatch adds options to every sbatch call (partition, account, smaller --cpus-per-task/--mem).
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
dump=$1 work=$2
shift 2
nodes=1 gpus=8 array=8 nsmc="" cpu=0 time=24:00:00 extra=() sbatch_opts=""
while [ $# -gt 0 ]; do
    case $1 in
        --nodes) nodes=$2; shift 2 ;;
        --gpus-per-node) gpus=$2; shift 2 ;;
        --array) array=$2; shift 2 ;;
        --nsmc-dir) nsmc=$2; shift 2 ;;
        --cpu) cpu=1; shift ;;
        --time) time=$2; shift 2 ;;
        --sbatch) sbatch_opts=$2; shift 2 ;;
        --) shift; extra=("$@"); break ;;
        *) echo "submit.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$work/logs"
# shellcheck disable=SC2086
sb() { sbatch --parsable --chdir "$REPO" --output "$work/logs/%x-%j.out" $sbatch_opts "$@"; }
gpu_opts=(--gpus-per-node="$gpus"); [ "$cpu" = 1 ] && gpu_opts=()
ex=$(sb --array=0-$((array - 1)) --output "$work/logs/%x-%A_%a.out" slurm/extract.sbatch "$dump" "$work/corpus")
tk=$(sb --dependency=afterok:$ex slurm/tokenizer.sbatch "$work/corpus" "$work/tokenizer")
sh=$(sb --dependency=afterok:$tk --array=0-$((array - 1)) --output "$work/logs/%x-%A_%a.out" \
     slurm/shard.sbatch "$work/corpus" "$work/tokenizer" "$work/shards")
pt=$(GPUS_PER_NODE=$([ "$cpu" = 1 ] && echo 1 || echo "$gpus") sb --dependency=afterok:$sh --nodes="$nodes" \
     "${gpu_opts[@]}" --time="$time" --export=ALL slurm/pretrain.sbatch "$work/shards" "$work/pretrain" "${extra[@]}")
echo "extract $ex, tokenizer $tk, shard $sh, pretrain $pt"
if [ -n "$nsmc" ]; then
    gpu1=(--gpus=1); [ "$cpu" = 1 ] && gpu1=()
    ft=$(sb --dependency=afterok:$pt "${gpu1[@]}" slurm/finetune.sbatch "$work/pretrain/model" nsmc \
         "$nsmc/ratings_train.tsv" "$nsmc/ratings_test.tsv" "$work/finetune")
    echo "finetune $ft"
fi
