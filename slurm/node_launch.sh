#!/usr/bin/env bash
# Run by srun once per node: one `accelerate launch` with this node's rank in the job.
# USR1/TERM are forwarded to the training ranks themselves (torchrun's agent would die on
# USR1 and kill the ranks on TERM after a grace period), so they can agree on a step,
# checkpoint and exit with code 75.
# Environment: REPO MAIN_ADDR MAIN_PORT GPUS_PER_NODE, ACCELERATE_CONFIG (an accelerate config
# file, default accelerate_configs/multi_gpu.yaml; accelerate_configs/deepspeed_zero*.yaml for
# DeepSpeed), LAUNCH_ARGS (extra accelerate flags), and the pretrain arguments as "$@".
set -uo pipefail
# A relative path as given (from the submit directory) or else inside the repository.
resolve() { if [[ $1 = /* ]] || [ -e "$1" ]; then echo "$1"; else echo "$REPO/$1"; fi; }
config=$(resolve "${ACCELERATE_CONFIG:-accelerate_configs/multi_gpu.yaml}")
if [ ! -f "$config" ]; then
    echo "error: ACCELERATE_CONFIG=$config does not exist; use one of $REPO/accelerate_configs/*.yaml" >&2
    exit 2
fi
# shellcheck disable=SC2206
extra=(${LAUNCH_ARGS:-})
for i in "${!extra[@]}"; do
    case ${extra[$i]} in *.json | *.yaml | *.yml) extra[$i]=$(resolve "${extra[$i]}") ;; esac
done
procs=$(( SLURM_NNODES * GPUS_PER_NODE ))
# The config file always, explicitly: a user's default accelerate config never leaks in; the
# topology comes from SLURM.
args=(--config_file "$config" --num_machines "$SLURM_NNODES" --num_processes "$procs"
      --machine_rank "$SLURM_NODEID" --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT"
      --rdzv_backend static)
mode=$(grep -oP '^distributed_type:\s*\K\S+' "$config" | tr -d "'\"")
case " ${extra[*]} " in *" --use_deepspeed "*) mode=DEEPSPEED ;; esac
if [ "$mode" = DEEPSPEED ]; then
    # one torchrun per node under srun (accelerate's "standard" launcher), never pdsh; the JSON
    # named in the YAML is found from any directory
    ds=$(grep -oP '^\s+deepspeed_config_file:\s*\K\S+' "$config" | tr -d "'\"")
    [ -n "$ds" ] && args+=(--deepspeed_config_file "$(resolve "$ds")")
    args+=(--deepspeed_multinode_launcher standard)
elif [ "$procs" -gt 1 ]; then
    args+=(--multi_gpu)
fi
# SLURM may signal every process of the step: the launcher must survive USR1, so it starts
# with USR1 ignored (inherited); the ranks install their own handler.
trap '' USR1
# The launcher's stderr is kept too: a rank's one-line refusal and exit code sit above
# torchrun's failure summary, and are handed back (REFUSAL_FILE) for the job's last log line.
errors=$(mktemp)
accelerate launch "${args[@]}" "${extra[@]}" -m pipeline.pretrain "$@" 2> >(tee "$errors" >&2) &
launcher=$!
forward() { pkill "-$1" -P "$launcher" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while :; do
    wait "$launcher" && status=0 || status=$?
    kill -0 "$launcher" 2>/dev/null || break
done
if [ "$status" -ne 0 ]; then
    code=$(sed -n '/Root Cause/,$p' "$errors" | grep -m1 -oP 'exitcode\s*:\s*\K[0-9]+' || true)
    [ -n "$code" ] && [ "$code" -ne 0 ] && status=$code
    line=$(grep -m1 '^error: ' "$errors" || true)
    [ -n "$line" ] && [ -n "${REFUSAL_FILE:-}" ] && [ "$SLURM_NODEID" = 0 ] && echo "$line" >"$REFUSAL_FILE"
fi
rm -f "$errors"
exit "$status"
