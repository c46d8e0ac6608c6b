#!/usr/bin/env bash
# Run by srun once per node: one `accelerate launch` with this node's rank in the job.
# USR1/TERM are forwarded to the training ranks themselves (torchrun's agent would die on
# USR1 and kill the ranks on TERM after a grace period), so they can agree on a step,
# checkpoint and exit with code 75.
# Environment: MAIN_ADDR MAIN_PORT GPUS_PER_NODE LAUNCH_ARGS (extra accelerate flags), and
# the pretrain arguments as "$@".
set -uo pipefail
procs=$(( SLURM_NNODES * GPUS_PER_NODE ))
args=(--num_machines "$SLURM_NNODES" --num_processes "$procs" --machine_rank "$SLURM_NODEID"
      --main_process_ip "$MAIN_ADDR" --main_process_port "$MAIN_PORT" --rdzv_backend static)
if [ "$SLURM_NNODES" -gt 1 ] || [ "$GPUS_PER_NODE" -gt 1 ]; then args+=(--multi_gpu); fi
# shellcheck disable=SC2206
extra=(${LAUNCH_ARGS:-})
# SLURM may signal every process of the step: the launcher must survive USR1, so it starts
# with USR1 ignored (inherited); the ranks install their own handler.
trap '' USR1
accelerate launch "${args[@]}" "${extra[@]}" -m pipeline.pretrain "$@" &
launcher=$!
forward() { pkill "-$1" -P "$launcher" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM
while :; do
    wait "$launcher" && status=0 || status=$?
    kill -0 "$launcher" 2>/dev/null || break
done
exit "$status"
