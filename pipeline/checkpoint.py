"""Checkpoints: ``OUTPUT/checkpoints/step-XXXXXXXX/``, atomic, verified, exactly resumable.

A checkpoint is written to ``.tmp-step-XXXXXXXX``, gets ``checksums.json`` and then the
``COMPLETE`` marker, and only then is renamed into place. "Latest" is the highest step with a
marker whose checksums verify; a damaged one is reported and the previous one used. Each
``state.json`` records the run's identity (seed, model, data, tokenizer, global batch): a
checkpoint is resumed, and pruned, only by the run it belongs to. Loads use
safetensors or ``torch.load(weights_only=True)``, DeepSpeed's engine files included: its own
loader unpickles anything, so ours replaces it while a checkpoint is loaded.
"""

from __future__ import annotations

import json
import pickle
import random
import re
import shutil
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_model, save_model

from pipeline.errors import PipelineError
from pipeline.shards import atomic_write_json, differences, file_sha256

COMPLETE = "COMPLETE"
_STEP_DIR = re.compile(r"^step-(\d{8})$")


def step_dir(root: Path, step: int) -> Path:
    return root / f"step-{step:08d}"


def rng_state() -> dict:
    np_state = np.random.get_state()
    state = {"torch": torch.get_rng_state(), "python": list(random.getstate()[1]),
             "python_version": random.getstate()[0], "python_gauss": random.getstate()[2],
             "numpy_key": torch.from_numpy(np_state[1].astype(np.int64)), "numpy_pos": int(np_state[2])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate((state["python_version"], tuple(state["python"]), state["python_gauss"]))
    np.random.set_state(("MT19937", state["numpy_key"].numpy().astype(np.uint32), state["numpy_pos"], 0, 0.0))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def checksums(path: Path) -> dict[str, str]:
    """SHA-256 of every file of a checkpoint folder but the seal's own two."""
    return {str(p.relative_to(path)): file_sha256(p) for p in sorted(path.rglob("*"))
            if p.is_file() and p.name not in ("checksums.json", COMPLETE)}


def seal(tmp: Path, final: Path) -> None:
    """Checksum every file, write the marker, rename into place (rank 0 only)."""
    atomic_write_json(tmp / "checksums.json", checksums(tmp))
    (tmp / COMPLETE).write_text("ok\n")
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)


def verify(path: Path) -> str | None:
    """None if the checkpoint is complete and intact, else what is wrong with it."""
    if not (path / COMPLETE).exists():
        return "no COMPLETE marker"
    try:
        sums = json.loads((path / "checksums.json").read_text())
    except (OSError, json.JSONDecodeError):
        return "checksums.json unreadable"
    for name, digest in sums.items():
        file = path / name
        if not file.exists():
            return f"{name} missing"
        if file_sha256(file) != digest:
            return f"{name} does not match its checksum"
    return None


def candidates(root: Path) -> list[Path]:
    """Checkpoint folders, highest step first."""
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_DIR.match(p.name))]
    return [p for _, p in sorted(found, reverse=True)]


def latest_valid(root: Path, log=print) -> Path | None:
    """The highest verified checkpoint; damaged ones are reported and skipped."""
    for path in candidates(root):
        problem = verify(path)
        if problem is None:
            return path
        log(f"checkpoint {path.name} is damaged ({problem}); falling back to the previous one")
    return None


def _state(path: Path) -> dict | None:
    """A checkpoint's ``state.json``, or None when it cannot be read (a damaged checkpoint)."""
    try:
        state = json.loads((path / "state.json").read_text())
        return state if isinstance(state, dict) else None
    except (OSError, ValueError):
        return None


def run_of(path: Path) -> dict | None:
    """The run identity a checkpoint's ``state.json`` records (None: unreadable or none)."""
    return (_state(path) or {}).get("run")


def other_runs(root: Path, run: dict) -> list[tuple[Path, list[str]]]:
    """Readable checkpoints in ``root`` that belong to another run, with what differs (damaged
    ones are left to ``latest_valid``, which reports them)."""
    states = [(path, _state(path)) for path in candidates(root)]
    return [(path, differences(state.get("run"), run)) for path, state in states
            if state is not None and state.get("run") != run]


def find(root: Path, resume: str, run: dict, log=print) -> Path | None:
    """The checkpoint to resume for ``resume`` (auto, never or a path), only ever of this run.

    A folder holding another run's checkpoints is refused whatever ``resume`` says, so a new run
    neither continues nor prunes an old one; "auto" with every checkpoint damaged is an error,
    never a silent restart at step 0.
    """
    others = other_runs(root, run)
    if others:
        path, why = others[0]
        raise PipelineError(f"{root} holds checkpoints of another run ({path.name}: {'; '.join(why)}); "
                            f"pass a new --output, or move {root} away to start this run afresh (to go on from its weights with "
                            f"new settings, start a new run with --init-from {path})")
    if resume == "never":
        return None
    if resume == "auto":
        path = latest_valid(root, log)
        if path is None and candidates(root):
            raise PipelineError(f"every checkpoint in {root} is damaged (see above); pass --resume PATH to an intact "
                                f"copy, or move {root} away to start again from step 0")
        return path
    path = Path(resume)
    problem = verify(path) if path.is_dir() else "no such directory"
    if problem:
        raise PipelineError(f"resume checkpoint {path}: {problem}; pass another one or --resume auto")
    recorded = run_of(path)
    if recorded != run:
        why = differences(recorded, run)
        raise PipelineError(f"resume checkpoint {path} belongs to another run ({'; '.join(why)}); resume it with "
                            "the settings it was trained with, or go on from its weights with new settings (batch size, sequence "
                            f"length) as a new run: --output NEW_DIR --init-from {path}")
    return path


def prune(root: Path, keep_last: int, keep_every: int, run: dict) -> None:
    """Keep this run's last ``keep_last`` checkpoints and every ``keep_every``-th step as
    milestones; another run's checkpoints are never touched."""
    for path in [p for p in candidates(root) if run_of(p) == run][max(keep_last, 1):]:
        step = int(path.name.split("-")[1])
        if not (keep_every and step % keep_every == 0):
            shutil.rmtree(path, ignore_errors=True)
    for tmp in root.glob(".tmp-step-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def save_module(module: torch.nn.Module, path: Path) -> None:
    save_model(module, str(path))  # handles the tied embedding/decoder weights


def load_module(module: torch.nn.Module, path: Path) -> None:
    missing, unexpected = load_model(module, str(path), strict=True)


def save_torch(obj, path: Path) -> None:
    torch.save(obj, path)


def load_torch(path, map_location="cpu", allowed: list | tuple = ()):
    """``torch.load(weights_only=True)``, with ``allowed`` plain-data classes besides tensors;
    a file holding anything else is refused with a clear error instead of being run."""
    try:
        with torch.serialization.safe_globals(list(allowed)):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise PipelineError(f"{path} holds objects that are not plain tensors and data, so it was not "
                            f"loaded (weights_only=True): {str(e).splitlines()[0]}; resume from a "
                            "checkpoint this pipeline wrote") from None


def _deepspeed_safe_globals() -> list:
    """The plain-data classes DeepSpeed pickles into its ZeRO 1-3 model and optimizer states."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


@contextmanager
def weights_only_deepspeed_loads(engine):
    """While active, ``engine.load_checkpoint`` reads its files through ``load_torch``.

    DeepSpeed's TorchCheckpointEngine calls ``torch.load(weights_only=False)``, which runs any
    code a tampered checkpoint carries; every file it loads goes through its ``load``.
    """
    allowed = _deepspeed_safe_globals()
    engine.checkpoint_engine.load = lambda path, map_location=None: load_torch(path, map_location, allowed)
    try:
        yield
    finally:
        del engine.checkpoint_engine.load  # the class's own method shows through again
