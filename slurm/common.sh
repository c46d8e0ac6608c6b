# Sourced by every sbatch script: one place for the environment a job needs.
# A job runs in the directory it was submitted from (SLURM's default), so relative paths mean
# what they meant at the prompt. kowiki-bert comes from the environment that was active at
# sbatch time (sbatch exports PATH), else <repo>/.venv.
set -euo pipefail
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
if ! command -v kowiki-bert >/dev/null && [ -x "$REPO/.venv/bin/kowiki-bert" ]; then
    export PATH="$REPO/.venv/bin:$PATH"
fi
command -v kowiki-bert >/dev/null || {
    echo "error: kowiki-bert is not installed for this job: activate its virtual environment before sbatch, or install it in $REPO/.venv (README, 'On your cluster')" >&2
    exit 2
}
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PYTHONUNBUFFERED=1
log() { echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+[$SLURM_ARRAY_TASK_ID]} restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s): $*"; }
