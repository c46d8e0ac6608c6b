#!/usr/bin/env bash
# Builds, here on the CPU machine, what the one device check (benchmarks/gpu.sh) carries to a
# bare GPU machine: BERT-base-sized pretraining shards (seq 128, 32K WordPiece) of real Korean
# text, in OUT/shards (default .bench/shards, git-ignored; about 30 MB for the 58 MB review
# corpus, inside the device tool's 64 MiB). The GPU image has torch, transformers, accelerate,
# pyarrow and tokenizers, which is all training needs, so no wheels are carried.
#
#   benchmarks/prepare_gpu.sh [CORPUS] [OUT]   default ../shared/data/corpus/nsmc_reviews_docs.txt, .bench
#   then, with the device tool:  run  command "benchmarks/gpu.sh"  carry [".bench/shards"]
set -euo pipefail
cd "$(dirname "$0")/.."
corpus=${1:-../shared/data/corpus/nsmc_reviews_docs.txt}
out=${2:-.bench}
PY=${PYTHON:-python3}
[ -f "$corpus" ] || { echo "prepare_gpu.sh: no corpus at $corpus; pass a text or dump file as the first argument" >&2; exit 2; }
export HF_HUB_OFFLINE=1
$PY -m pipeline.cli extract --input "$corpus" --output "$out/corpus" --num-proc 2
$PY -m pipeline.cli tokenizer --corpus "$out/corpus" --output "$out/tokenizer" --vocab-size 32000
$PY -m pipeline.cli shard --corpus "$out/corpus" --tokenizer "$out/tokenizer" --output "$out/shards" --max-seq-len 128 --num-proc 2
mib=$(du -sm "$out/shards" | cut -f1)
if [ "$mib" -gt 56 ]; then
    echo "prepare_gpu.sh: $out/shards is $mib MiB; the device tool carries 64 MiB with the repository: use a smaller corpus" >&2
    exit 1
fi
echo "prepare_gpu.sh: $out/shards ready ($mib MiB); carry it: run command \"benchmarks/gpu.sh --data $out/shards\" carry [\"$out/shards\"]"
