# Sourced by every sbatch script: one place for the environment a job needs.
# KOWIKI_VENV: the virtual environment with kowiki-bert installed (default: <repo>/.venv).
set -euo pipefail
REPO=${KOWIKI_REPO:-$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)}
VENV=${KOWIKI_VENV:-$REPO/.venv}
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} PYTHONUNBUFFERED=1
cd "$REPO"
log() { echo "[$(date '+%F %T')] job ${SLURM_JOB_ID:-?}${SLURM_ARRAY_TASK_ID:+[$SLURM_ARRAY_TASK_ID]} restart ${SLURM_RESTART_COUNT:-0} on $(hostname -s): $*"; }
