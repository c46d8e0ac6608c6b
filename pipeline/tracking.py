"""Experiment trackers (TensorBoard, W&B, MLflow) through Accelerate's tracker classes.

A run keeps its tracker identities (the W&B run id, the MLflow run id) in every checkpoint's
``state.json``, so a resumed or requeued job logs into the same W&B and MLflow run instead of
starting a new one. Everything is written under the run's output unless the user's own
``WANDB_DIR`` / ``MLFLOW_TRACKING_URI`` say otherwise; ``WANDB_MODE=offline`` works as usual.
"""

from __future__ import annotations

import importlib
import os
import secrets
from pathlib import Path

from pipeline.errors import PipelineError

TRACKERS = ("tensorboard", "wandb", "mlflow")


def check_installed(names: list[str]) -> None:
    """Before any work: a tracker whose package is missing is a one-line error, not a crash at step 1."""
    missing = []
    for name in names:
        try:
            importlib.import_module(name)  # each tracker's package has its name
        except ImportError:
            missing.append(name)
    if missing:
        raise PipelineError(f"--log-with {','.join(missing)}: not installed; pip install 'kowiki-bert[track]' "
                            f"(wandb, mlflow-skinny), or leave {', '.join(missing)} out of --log-with")


def start(names: list[str], out: Path, project: str, run_name: str, config: dict, ids: dict | None,
          tensorboard_purge_step: int | None = None) -> tuple[list, dict]:
    """Start the trackers on the main process; returns them and their ids (new ones when
    ``ids`` is None) to be stored with the run."""
    from accelerate.tracking import MLflowTracker, TensorBoardTracker, WandBTracker

    ids = dict(ids or {})
    resumed = set(ids)  # these runs hold their parameters already (MLflow refuses to change one)
    trackers = []
    if "tensorboard" in names:
        kw = {"purge_step": tensorboard_purge_step} if tensorboard_purge_step else {}
        trackers.append(TensorBoardTracker("tensorboard", str(out), **kw))
    if "wandb" in names:
        ids.setdefault("wandb", secrets.token_hex(8))
        trackers.append(WandBTracker(project, id=ids["wandb"], resume="allow", name=run_name,
                                     dir=os.environ.get("WANDB_DIR") or str(out)))
    if "mlflow" in names:
        if not os.environ.get("MLFLOW_TRACKING_URI"):  # a local store under the run (MLflow 3 wants it asked for)
            import mlflow

            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
            mlflow.set_tracking_uri((out / "mlruns").resolve().as_uri())
        trackers.append(MLflowTracker(project, run_id=ids.get("mlflow"), run_name=run_name))
    for tracker in trackers:
        tracker.start()
        if tracker.name == "mlflow":
            ids["mlflow"] = tracker.tracker.info.run_id
    flat = flatten(config)
    for tracker in trackers:  # TensorBoard's hparams would be a second run folder; run_info.json has them
        if tracker.name != "tensorboard" and tracker.name not in resumed:
            tracker.store_init_configuration(flat)
    return trackers, ids


def flatten(config: dict, prefix: str = "") -> dict:
    """Nested config as dotted keys with scalar values: what every tracker can store."""
    flat = {}
    for k, v in config.items():
        if isinstance(v, dict):
            flat.update(flatten(v, f"{prefix}{k}."))
        else:
            flat[prefix + k] = v if isinstance(v, (int, float, str, bool)) else str(v)
    return flat


def log(trackers: list, values: dict, step: int) -> None:
    for tracker in trackers:
        tracker.log(values, step=step)


def finish(trackers: list) -> None:
    for tracker in trackers:
        tracker.finish()
