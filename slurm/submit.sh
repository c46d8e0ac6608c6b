#!/usr/bin/env bash
# Submit the whole pipeline as dependent SLURM jobs: extract -> tokenizer -> shard -> pretrain
# [-> finetune], each stage with its kowiki recipe (pipeline/configs/*_kowiki.yaml).
usage="usage: slurm/submit.sh DUMP WORK_DIR [options] [-- pretrain options]
  DUMP                 the kowiki dump (kowiki-YYYYMMDD-pages-articles-multistream.xml.bz2)
  WORK_DIR             where every stage writes (corpus, tokenizer, shards, pretrain, finetune, logs)
  --nodes N            pretraining nodes (1)
  --gpus-per-node G    GPUs per node (8)
  --array N            array tasks for extract and shard (8)
  --nsmc-dir DIR       fine-tune NSMC afterwards: DIR holds ratings_train.txt and ratings_test.txt
  --task TASK:TRAIN:EVAL  fine-tune any task afterwards (nsmc, klue-nli, klue-sts, generic)
  --accelerate-config FILE  pretraining launch (accelerate_configs/multi_gpu.yaml; DeepSpeed:
                       accelerate_configs/deepspeed_zero2.yaml, deepspeed_zero3.yaml, ...)
  --cpu                CPU-only jobs (no --gpus), to try the chain on a CPU partition
  --time HH:MM:SS      pretraining time limit per attempt (24:00:00); it requeues itself
  --sbatch \"OPTIONS\"   added to every sbatch call (--partition, --account, --cpus-per-task, --mem)
  --extract|--tokenizer|--shard|--finetune \"OPTIONS\"  added to that stage's command line
Relative paths are taken from the directory you submit from; the jobs run there too."
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
die() { echo "submit.sh: error: $*" >&2; exit 2; }
case ${1:-} in -h | --help) echo "$usage"; exit 0 ;; esac
[ $# -ge 2 ] || { echo "$usage" >&2; exit 2; }
dump=$1 work=$2
shift 2
nodes=1 gpus=8 array=8 cpu=0 time=24:00:00 extra=() sbatch_opts="" task="" launch_config=""
declare -A stage_opts=([extract]="" [tokenizer]="" [shard]="" [finetune]="")
while [ $# -gt 0 ]; do
    case $1 in
        --nodes | --gpus-per-node | --array | --nsmc-dir | --task | --time | --sbatch | --accelerate-config \
            | --extract | --tokenizer | --shard | --finetune)
            [ $# -ge 2 ] || die "$1 needs a value"
            case $1 in
                --nodes) nodes=$2 ;; --gpus-per-node) gpus=$2 ;; --array) array=$2 ;; --time) time=$2 ;;
                --sbatch) sbatch_opts=$2 ;; --accelerate-config) launch_config=$2 ;; --task) task=$2 ;;
                --nsmc-dir)
                    for f in ratings_train ratings_test; do
                        [ -f "$2/$f.txt" ] || [ -f "$2/$f.tsv" ] || die "--nsmc-dir $2 has no $f.txt (the official NSMC file name)"
                    done
                    pick() { if [ -f "$2/$1.txt" ]; then echo "$2/$1.txt"; else echo "$2/$1.tsv"; fi; }
                    task="nsmc:$(pick ratings_train "$2"):$(pick ratings_test "$2")" ;;
                *) stage_opts[${1#--}]=$2 ;;
            esac
            shift 2 ;;
        --cpu) cpu=1; shift ;;
        -h | --help) echo "$usage"; exit 0 ;;
        --) shift; extra=("$@"); break ;;
        *) die "unknown option $1 (see slurm/submit.sh --help)" ;;
    esac
done
for n in "$nodes" "$gpus" "$array"; do [[ $n =~ ^[1-9][0-9]*$ ]] || die "'$n' is not a positive count"; done
# Every input is checked now, not when its job starts a day later; paths become absolute.
[ -f "$dump" ] || die "the dump $dump does not exist"
dump=$(realpath "$dump") work=$(realpath -m "$work")
ft_name="" ft_train="" ft_eval=""
if [ -n "$task" ]; then
    IFS=: read -r ft_name ft_train ft_eval <<<"$task"
    [ -n "$ft_eval" ] || die "--task takes TASK:TRAIN:EVAL, got '$task'"
    for f in "$ft_train" "$ft_eval"; do [ -f "$f" ] || die "fine-tune file $f does not exist"; done
    ft_train=$(realpath "$ft_train") ft_eval=$(realpath "$ft_eval")
fi
if [ -n "$launch_config" ]; then
    [ -f "$launch_config" ] || [ -f "$REPO/$launch_config" ] || die "--accelerate-config $launch_config does not exist"
    [ -f "$launch_config" ] && launch_config=$(realpath "$launch_config")
fi
command -v sbatch >/dev/null || die "sbatch is not on PATH: run this on a SLURM login node"
# The jobs use the environment active now (sbatch exports PATH), else the repository's .venv.
bin=$(command -v kowiki-bert || echo "$REPO/.venv/bin/kowiki-bert")
[ -x "$bin" ] || die "kowiki-bert is not installed: activate its virtual environment or install it in $REPO/.venv"
# The pretrain options are checked by the pretrain stage itself (config ranges, batch arithmetic).
per_node=$gpus; [ "$cpu" = 1 ] && per_node=1
world=$(( nodes * per_node ))
WORLD_SIZE=$world "$bin" pretrain --data "$work/shards" --output "$work/pretrain" "${extra[@]}" --dry-run >/dev/null \
    || die "the pretrain options above are refused; nothing was submitted"
mkdir -p "$work/logs"
recipe() { echo --config "$REPO/pipeline/configs/$1"; }
# shellcheck disable=SC2086
sb() { sbatch --parsable --output "$work/logs/%x-%j.out" $sbatch_opts "$@"; }
gpu_opts=(--gpus-per-node="$gpus"); [ "$cpu" = 1 ] && gpu_opts=()
# shellcheck disable=SC2046,SC2086
{
ex=$(sb --array=0-$((array - 1)) --output "$work/logs/%x-%A_%a.out" "$REPO/slurm/extract.sbatch" "$dump" "$work/corpus" \
     $(recipe extract_kowiki.yaml) ${stage_opts[extract]})
tk=$(sb --dependency=afterok:$ex "$REPO/slurm/tokenizer.sbatch" "$work/corpus" "$work/tokenizer" \
     $(recipe tokenizer_kowiki.yaml) ${stage_opts[tokenizer]})
sh=$(sb --dependency=afterok:$tk --array=0-$((array - 1)) --output "$work/logs/%x-%A_%a.out" \
     "$REPO/slurm/shard.sbatch" "$work/corpus" "$work/tokenizer" "$work/shards" $(recipe shard_kowiki.yaml) ${stage_opts[shard]})
pt=$(GPUS_PER_NODE=$per_node ACCELERATE_CONFIG=$launch_config sb --dependency=afterok:$sh --nodes="$nodes" \
     "${gpu_opts[@]}" --time="$time" "$REPO/slurm/pretrain.sbatch" "$work/shards" "$work/pretrain" "${extra[@]}")
}
echo "extract $ex, tokenizer $tk, shard $sh, pretrain $pt"
if [ -n "$ft_name" ]; then
    gpu1=(--gpus=1); [ "$cpu" = 1 ] && gpu1=()
    ft_recipe=(); [ "$ft_name" = nsmc ] && ft_recipe=($(recipe finetune_nsmc.yaml))
    # shellcheck disable=SC2086
    ft=$(sb --dependency=afterok:$pt "${gpu1[@]}" "$REPO/slurm/finetune.sbatch" "$work/pretrain/model" "$ft_name" \
         "$ft_train" "$ft_eval" "$work/finetune" "${ft_recipe[@]}" ${stage_opts[finetune]})
    echo "finetune $ft"
fi
echo "logs: $work/logs/"
