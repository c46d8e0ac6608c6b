"""Atomic, resumable Arrow shards with a manifest, shared by the corpus and shard stages.

A shard's files (``shard-00007.arrow``, or ``train-00007.arrow`` and ``valid-00007.arrow``) are written under a temporary name and renamed when complete;
its record ``shard-00007.json`` (sizes, checksums, counts) is written after them, so a shard
with a record is complete. ``manifest.json`` is written last, once every shard has its record:
a directory without it never loads.

Every record and manifest carries the ``identity`` the output was built from (input content,
upstream fingerprints, settings). A stage resumes only output of the same identity, never
touches a directory holding files it did not write, and rebuilds under ``--overwrite`` in a
staging sibling that replaces the old output only once complete.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
from pathlib import Path
from typing import Any

import pyarrow as pa

from pipeline.errors import PipelineError

MANIFEST = "manifest.json"
# What ``datasets.load_from_disk`` reads: one Dataset (state.json at the top) for a single kind
# of shard file, a DatasetDict (one folder per split) for several; they point at our files.
DATASET_FILES = ("state.json", "dataset_info.json", "dataset_dict.json")


def fingerprint(obj: Any) -> str:
    """A stable hash of JSON-able settings: outputs made with other settings are not mixed."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def differences(old: dict | None, new: dict, prefix: str = "") -> list[str]:
    """What changed between two identities, as ``key: old -> new`` lines."""
    if old is None:
        return ["it was made by an older kowiki-bert that recorded no identity"]
    out = []
    for key in sorted(set(old) | set(new)):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            out += differences(a, b, f"{prefix}{key}.")
        elif a != b:
            out.append(f"{prefix}{key}: {a} -> {b}")
    return out


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


def claim(out: Path, index: int, config_hash: str, names: tuple[str, ...]) -> bool:
    """For a shard this task owns: remove what a killed write of it left, and say whether it
    is still to do. Per shard, so array tasks never delete each other's files in flight."""
    for name in (*names, "shard"):
        for stale in out.glob(f".{name}-{index:05d}.*.tmp-*"):
            stale.unlink(missing_ok=True)
    return read_record(out, index, config_hash) is None


def read_record(out: Path, index: int, config_hash: str) -> dict | None:
    """The completion record of a shard made with the same settings, else None."""
    rec_file = record_path(out, index)
    if not rec_file.exists():
        return None
    try:
        record = json.loads(rec_file.read_text())
        if record.get("config_hash") != config_hash:
            return None
        for info in record["files"].values():
            path = out / info["file"]
            if not path.exists() or path.stat().st_size != info["bytes"]:
                return None
    except (ValueError, KeyError, TypeError, AttributeError):
        return None  # a damaged record: the shard is made again
    return record


def _owned(names: tuple[str, ...], extra: tuple[str, ...]) -> re.Pattern:
    """Names a stage writes into its output: shard files and records, the manifest, their
    temporaries, and ``extra`` entries (the shard stage's ``tokenizer`` copy)."""
    own = "|".join(map(re.escape, (MANIFEST, *DATASET_FILES, *names, *extra)))
    shard = "|".join(map(re.escape, names))
    # cache-*.arrow: what datasets' documented load_from_disk(...).map(...) writes beside our files
    return re.compile(rf"^\.?(?:{own}|shard-\d{{5}}\.json|(?:{shard})-\d{{5}}\.arrow)(?:\.tmp-\d+)?$|^cache-\w+\.arrow$")


def foreign_entries(out: Path, names: tuple[str, ...], extra: tuple[str, ...] = ()) -> list[str]:
    """Entries of ``out`` that the stage did not write: never deleted, never mixed with."""
    if not out.is_dir():
        return []
    pattern = _owned(names, extra)
    return sorted(p.name for p in out.iterdir() if not pattern.match(p.name))


def check_not_inputs(out: Path, inputs) -> None:
    """Refuse an output that is, holds or sits inside one of the stage's own inputs."""
    o = out.resolve()
    for src in map(Path, inputs):
        s = src.resolve()
        if o == s or s in o.parents or o in s.parents:
            raise PipelineError(f"--output {out} overlaps the input {src}; pass an output directory of its own")


def _identities(out: Path) -> dict[str, dict | None]:
    """config_hash -> identity of every record and manifest in ``out`` (unreadable ones skipped)."""
    found = {}
    for path in sorted(out.glob("shard-*.json")) + [out / MANIFEST]:
        try:
            data = json.loads(path.read_text())
            found[data["config_hash"]] = data.get("identity")
        except (OSError, ValueError, KeyError, TypeError):
            continue  # a damaged record is redone; a damaged manifest rewritten
    return found


def recover_swap(out: Path) -> None:
    """Finish what a swap killed between its two renames left behind."""
    for old in sorted(out.parent.glob(f".{out.name}.old-*")):
        if out.exists():
            shutil.rmtree(old)  # the swap completed; this is the replaced output
        else:
            os.rename(old, out)  # killed mid-swap: the old output goes back


def prepare_output(out: Path, identity: dict, overwrite: bool, stage: str, names: tuple[str, ...],
                   inputs=(), extra: tuple[str, ...] = ()) -> Path:
    """The directory to build in: ``out`` itself (new, or the same identity: resume), or,
    with ``overwrite``, a staging sibling that ``publish`` swaps in once it is complete."""
    check_not_inputs(out, inputs)
    recover_swap(out)
    if out.exists() and not out.is_dir():
        raise PipelineError(f"--output {out} is a file; pass a directory")
    foreign = foreign_entries(out, names, extra)
    if foreign:
        raise PipelineError(f"{out} holds files 'kowiki-bert {stage}' did not write ({', '.join(foreign[:3])}"
                            f"{', ...' if len(foreign) > 3 else ''}); pass an empty or new --output")
    config_hash = fingerprint(identity)
    others = {h: i for h, i in _identities(out).items() if h != config_hash}
    if not others:
        out.mkdir(parents=True, exist_ok=True)
        return out
    if not overwrite:
        why = "; ".join(differences(next(iter(others.values())), identity))
        raise PipelineError(f"{out} holds {stage} output built from other inputs or settings ({why}); pass a new "
                            f"--output, or --overwrite true to rebuild it (the old output stays until the new one is complete)")
    return prepare_output(out.with_name(f".{out.name}.rebuild-{config_hash}"), identity, False, stage, names, (), extra)


def publish(build: Path, out: Path, names: tuple[str, ...], extra: tuple[str, ...] = ()) -> None:
    """Swap a complete staging build in for ``out``; the old output is removed only after."""
    if build == out:
        return
    foreign = foreign_entries(out, names, extra)
    if foreign:
        raise PipelineError(f"{out} gained files kowiki-bert did not write ({', '.join(foreign[:3])}); the new output "
                            f"is complete in {build}: move those files away and run again to swap it in")
    swap_dir(build, out)


def published(build: Path, out: Path, config_hash: str) -> bool:
    """Whether another task of this job already published this build: its staging folder was
    swapped in, or its manifest (written last) is there."""
    if build != out and not build.exists():
        return True
    try:
        return json.loads((build / MANIFEST).read_text()).get("config_hash") == config_hash
    except (OSError, ValueError, AttributeError):
        return False


def swap_dir(build: Path, out: Path) -> None:
    """Rename ``build`` to ``out``, moving the old ``out`` aside first and removing it last."""
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    if out.exists():
        os.rename(out, old)
    os.rename(build, out)
    shutil.rmtree(old, ignore_errors=True)


def complete_records(out: Path, num_shards: int, config_hash: str) -> list[dict] | None:
    """Every shard's record if all are complete, else None."""
    records = [read_record(out, i, config_hash) for i in range(num_shards)]
    return None if any(r is None for r in records) else records


def output_fingerprint(manifest: dict) -> str:
    """Identity of a finished output's content: its settings and every file's checksum."""
    return fingerprint([manifest["config_hash"]] + [info["sha256"] for rec in manifest["shards"]
                                                    for info in rec["files"].values()])


def corpus_summary(corpus_manifest: dict) -> dict:
    """What a model card says about the text behind shards: the source file, its layout and
    how many documents were kept (recorded in the shards, so it outlives the corpus folder)."""
    source = corpus_manifest.get("source", {})
    return {"source": Path(source.get("path", "")).name or "unknown", "format": source.get("format", "unknown"),
            "documents": corpus_manifest.get("counts", {}).get("kept")}


def write_manifest(out: Path, records: list[dict], manifest: dict, identity: dict) -> dict:
    """Write ``manifest.json`` (last: it marks the output complete) with per-shard tallies summed."""
    totals: dict[str, dict] = {}
    for key in ("counts", "pii"):
        for r in records:
            if key in r:
                tally = totals.setdefault(key, {})
                for name, n in r[key].items():  # not Counter's +, which drops zero tallies
                    tally[name] = tally.get(name, 0) + n
    manifest = dict(manifest, **totals, identity=identity, config_hash=fingerprint(identity),
                    num_shards=len(records), shards=records)
    manifest["fingerprint"] = output_fingerprint(manifest)
    write_dataset_index(out, records, manifest["fingerprint"])
    atomic_write_json(out / MANIFEST, manifest)
    return manifest


def write_dataset_index(out: Path, records: list[dict], fingerprint_: str) -> None:
    """Let ``datasets.load_from_disk(out)`` open the shards in place (no copy): a Dataset of
    every shard file, or a DatasetDict of one split per file kind (``train``, ``valid``)."""
    names = list(records[0]["files"]) if records else []

    def index(folder: Path, name: str, prefix: str) -> None:
        folder.mkdir(exist_ok=True)
        atomic_write_json(folder / "state.json", {
            "_data_files": [{"filename": prefix + r["files"][name]["file"]} for r in records],
            "_fingerprint": fingerprint_[:16], "_format_columns": None, "_format_kwargs": {}, "_format_type": None,
            "_output_all_columns": False, "_split": None if prefix == "" else name})
        atomic_write_json(folder / "dataset_info.json", {"description": f"kowiki-bert {name} files, see ../{MANIFEST}"})

    if len(names) == 1:
        index(out, names[0], "")
    elif names:
        for name in names:
            index(out / name, name, "../")
        atomic_write_json(out / "dataset_dict.json", {"splits": names})


def verify_checksums(out: Path, manifest: dict, hint: str) -> int:
    """Check every shard file against its recorded sha256; returns the bytes read."""
    total = 0
    for rec in manifest["shards"]:
        for info in rec["files"].values():
            file = out / info["file"]
            if file_sha256(file) != info["sha256"]:
                raise PipelineError(f"{file} does not match its sha256 in {MANIFEST} (damaged or changed on disk); {hint}")
            total += info["bytes"]
    return total


def read_manifest(out: Path, what: str, hint: str) -> dict:
    """The manifest of a finished stage output, or an error saying how to finish it."""
    out = Path(out)
    if not out.is_dir():
        raise PipelineError(f"{out}: no such directory; {hint}")
    path = out / MANIFEST
    if not path.exists():
        raise PipelineError(f"{out}: no {MANIFEST}, so the {what} is incomplete or not one; {hint}")
    try:
        manifest = json.loads(path.read_text())
        files = [out / info["file"] for rec in manifest["shards"] for info in rec["files"].values()]
        manifest["config_hash"]
    except (ValueError, KeyError, TypeError):
        raise PipelineError(f"{path} is damaged (not the JSON kowiki-bert wrote); {hint}") from None
    for rec in manifest["shards"]:
        for info in rec["files"].values():
            file = out / info["file"]
            if not file.exists() or file.stat().st_size != info["bytes"]:
                raise PipelineError(f"{file}: missing or changed since {MANIFEST} was written; {hint}")
    return manifest
