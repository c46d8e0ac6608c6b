"""Atomic, resumable Arrow shards with a manifest, shared by the corpus and shard stages.

A shard's files (``shard-00007.arrow``, or ``train-00007.arrow`` and ``valid-00007.arrow``) are written under a temporary name and renamed when complete;
its record ``shard-00007.json`` (sizes, checksums, counts) is written after them, so a shard
with a record is complete. ``manifest.json`` is written last, once every shard has its record:
a directory without it never loads.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import PipelineError

MANIFEST = "manifest.json"


def fingerprint(obj: Any) -> str:
    """A stable hash of JSON-able settings: outputs made with other settings are not mixed."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def file_sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def tree_sha256(path: Path) -> str:
    """Checksum of a file, or of every file under a folder in sorted order."""
    if path.is_file():
        return file_sha256(path)
    h = hashlib.sha256()
    for p in sorted(q for q in path.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(path)).encode())
        h.update(file_sha256(p).encode())
    return h.hexdigest()


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def shard_path(out: Path, name: str, index: int) -> Path:
    return out / f"{name}-{index:05d}.arrow"


def record_path(out: Path, index: int) -> Path:
    return out / f"shard-{index:05d}.json"


def _write_table(path: Path, table: pa.Table) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        # One record batch per file keeps every column one zero-copy memory-mapped buffer.
        with pa.OSFile(str(tmp), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as writer:
            writer.write_table(table.combine_chunks())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def write_shard(out: Path, index: int, tables: dict[str, pa.Table], record: dict) -> dict:
    """Write a shard's Arrow files atomically, then its completion record; returns the record."""
    files = {}
    for name, table in tables.items():
        path = shard_path(out, name, index)
        _write_table(path, table)
        files[name] = {"file": path.name, "rows": table.num_rows, "bytes": path.stat().st_size,
                       "sha256": file_sha256(path)}
    record = dict(record, index=index, files=files)
    atomic_write_json(record_path(out, index), record)
    return record


def read_record(out: Path, index: int, config_hash: str) -> dict | None:
    """The completion record of a shard made with the same settings, else None."""
    rec_file = record_path(out, index)
    if not rec_file.exists():
        return None
    try:
        record = json.loads(rec_file.read_text())
    except json.JSONDecodeError:
        return None
    if record.get("config_hash") != config_hash:
        return None
    for info in record.get("files", {}).values():
        path = out / info["file"]
        if not path.exists() or path.stat().st_size != info["bytes"]:
            return None
    return record


def prepare_output(out: Path, config_hash: str, overwrite: bool, stage: str) -> None:
    """Make ``out``, refusing to mix shards made with other settings into it."""
    out.mkdir(parents=True, exist_ok=True)
    for tmp in out.glob(".*.arrow.tmp-*"):
        tmp.unlink()  # leftovers of a killed run
    manifest = out / MANIFEST
    records = sorted(out.glob("shard-*.json"))
    hashes = {json.loads(p.read_text()).get("config_hash") for p in records if p.stat().st_size}
    if manifest.exists():
        hashes.add(json.loads(manifest.read_text()).get("config_hash"))
    if hashes - {config_hash}:
        if not overwrite:
            raise PipelineError(f"{out} holds {stage} output made with other settings; "
                                f"pass a new --output, or --overwrite true to replace it")
        for p in list(out.glob("*-[0-9][0-9][0-9][0-9][0-9].*")) + [manifest]:
            p.unlink(missing_ok=True)


def finalize(out: Path, num_shards: int, config_hash: str, manifest: dict) -> bool:
    """Write ``manifest.json`` if every shard is complete; returns whether it did."""
    records = [read_record(out, i, config_hash) for i in range(num_shards)]
    if any(r is None for r in records):
        return False
    totals: dict[str, dict] = {}
    for key in ("counts", "pii"):  # per-shard tallies, summed once here for every stage
        for r in records:
            if key in r:
                tally = totals.setdefault(key, {})
                for name, n in r[key].items():  # not Counter's +, which drops zero tallies
                    tally[name] = tally.get(name, 0) + n
    atomic_write_json(out / MANIFEST, dict(manifest, **totals, config_hash=config_hash, num_shards=num_shards,
                                           shards=records))
    return True


def read_manifest(out: Path, what: str, hint: str) -> dict:
    """The manifest of a finished stage output, or an error saying how to finish it."""
    out = Path(out)
    if not out.is_dir():
        raise PipelineError(f"{out}: no such directory; {hint}")
    path = out / MANIFEST
    if not path.exists():
        raise PipelineError(f"{out}: no {MANIFEST}, so the {what} is incomplete or not one; {hint}")
    manifest = json.loads(path.read_text())
    for rec in manifest["shards"]:
        for info in rec["files"].values():
            file = out / info["file"]
            if not file.exists() or file.stat().st_size != info["bytes"]:
                raise PipelineError(f"{file}: missing or changed since {MANIFEST} was written; {hint}")
    return manifest
