"""Experiment trackers (TensorBoard, W&B, MLflow) through Accelerate's tracker classes.

A run keeps its tracker identities (the W&B run id, the MLflow run id) in every checkpoint's
``state.json``, so a resumed or requeued job logs into the same W&B and MLflow run instead of
starting a new one. Everything is written under the run's output unless the user's own
``WANDB_DIR`` / ``MLFLOW_TRACKING_URI`` say otherwise; ``WANDB_MODE=offline`` works as usual.
"""

from __future__ import annotations

import importlib
import os
import re
import secrets
import sys
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


PROJECT = re.compile(r"[\w.-]{1,128}")


def check_usable(names: list[str], project: str) -> None:
    """Before any work: a project name every tracker takes, W&B credentials when it logs
    online, an MLflow server that answers. Each is a one-line error instead of a traceback
    after the data and model are built."""
    if ("wandb" in names or "mlflow" in names) and not PROJECT.fullmatch(project):
        raise PipelineError(f"--project {project!r}: use letters, digits, '_', '.' and '-' only (at most 128)")
    if "wandb" in names and os.environ.get("WANDB_MODE", "online") not in ("offline", "disabled", "dryrun"):
        if not (os.environ.get("WANDB_API_KEY") or _wandb_netrc_key()):
            raise PipelineError("--log-with wandb: no W&B API key (WANDB_API_KEY or 'wandb login'); set one, or "
                                "WANDB_MODE=offline to log locally and 'wandb sync' later")
    uri = os.environ.get("MLFLOW_TRACKING_URI", "")
    if "mlflow" in names and uri.startswith(("http://", "https://")):
        import urllib.request

        try:
            urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=10).close()
        except Exception as err:  # noqa: BLE001 - any failure to reach it is the same answer
            raise PipelineError(f"--log-with mlflow: MLFLOW_TRACKING_URI {uri} does not answer ({type(err).__name__}: "
                                f"{(str(err).splitlines() or [''])[0]}); start the server, fix the URI, or unset it to "
                                "log under the output") from None


def _wandb_netrc_key() -> bool:
    """Whether 'wandb login' stored a key (in ~/.netrc, or the file NETRC names)."""
    import netrc

    try:
        auth = netrc.netrc(os.environ.get("NETRC")).authenticators("api.wandb.ai")
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(auth and auth[2])


def start(names: list[str], out: Path, project: str, run_name: str, config: dict, ids: dict | None,
          tensorboard_purge_step: int | None = None) -> tuple[list, dict]:
    """Start the trackers on the main process; returns them and their ids (new ones when
    ``ids`` is None) to be stored with the run."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

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
        trackers.append(_started_mlflow(project, ids, run_name, resumed))
    for tracker in trackers:
        if tracker.name != "mlflow":
            _start(tracker)
    flat = flatten(config)
    for tracker in trackers:  # TensorBoard's hparams would be a second run folder; run_info.json has them
        if tracker.name != "tensorboard" and tracker.name not in resumed:
            tracker.store_init_configuration(flat)
    return trackers, ids


def _start(tracker) -> None:
    try:
        tracker.start()
    except Exception as err:  # noqa: BLE001 - whatever the tracker's library raises
        raise PipelineError(f"--log-with {tracker.name}: cannot start ({type(err).__name__}: "
                            f"{(str(err).splitlines() or [''])[0]}); fix it or leave {tracker.name} out of --log-with") from None


def _started_mlflow(project: str, ids: dict, run_name: str, resumed: set):
    """The run's MLflow run, continued; a new one (said once) when the store lost it."""
    from accelerate.tracking import MLflowTracker

    tracker = MLflowTracker(project, run_id=ids.get("mlflow"), run_name=run_name)
    try:
        tracker.start()
    except Exception as err:  # noqa: BLE001
        if "mlflow" not in ids:
            raise PipelineError(f"--log-with mlflow: cannot start ({type(err).__name__}: {(str(err).splitlines() or [''])[0]})"
                                "; fix the store or leave mlflow out of --log-with") from None
        print(f"warning: MLflow run {ids['mlflow']} cannot be continued ({type(err).__name__}); logging to a new run",
              file=sys.stderr, flush=True)
        resumed.discard("mlflow")
        tracker = MLflowTracker(project, run_name=run_name)
        _start(tracker)
    ids["mlflow"] = tracker.tracker.info.run_id
    return tracker


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
    """Log to every tracker; one that fails (a full or read-only store, a lost server) is
    dropped with a warning: a tracker never stops training or touches checkpoints."""
    for tracker in list(trackers):
        try:
            tracker.log(values, step=step)
        except Exception as err:  # noqa: BLE001 - whatever the tracker's library raises
            trackers.remove(tracker)
            print(f"warning: {tracker.name} stopped logging at step {step} ({type(err).__name__}: "
                  f"{(str(err).splitlines() or [''])[0]}); training goes on, every value is still in train_log.jsonl",
                  file=sys.stderr, flush=True)


def finish(trackers: list) -> None:
    for tracker in trackers:
        try:
            tracker.finish()
        except Exception as err:  # noqa: BLE001
            print(f"warning: {tracker.name} did not close cleanly ({type(err).__name__}: {err})", file=sys.stderr)
