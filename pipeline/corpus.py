"""The corpus on disk: Arrow shards of documents (``id``, ``title``, ``sentences``)."""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa

from pipeline.errors import PipelineError
from pipeline.shards import read_manifest, verify_checksums

SCHEMA = pa.schema([("id", pa.string()), ("title", pa.string()), ("sentences", pa.list_(pa.string()))])


def documents_table(docs: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(docs, schema=SCHEMA)


def corpus_files(path: str | Path) -> list[Path]:
    """The shard files of a finished corpus, in order."""
    path = Path(path)
    manifest = read_manifest(path, "corpus", "run 'kowiki-bert extract' (again) to finish it")
    if manifest.get("kind") != "corpus":
        raise PipelineError(f"{path} is not a corpus made by 'kowiki-bert extract'; pass the extract output")
    # The content, not the path: a corpus file changed in place (even to the same size) is refused
    # before a tokenizer or shards are built from it under the old identity.
    verify_checksums(path, manifest, f"run 'kowiki-bert extract' again with --overwrite true for {path}")
    return [path / rec["files"]["shard"]["file"] for rec in manifest["shards"]]


def load_documents(path: str | Path):
    """The whole corpus as one memory-mapped ``datasets.Dataset``."""
    import datasets  # here, so training (which never reads the corpus) runs without it

    files = corpus_files(path)
    parts = [datasets.Dataset.from_file(str(f)) for f in files]
    if not parts:
        return datasets.Dataset.from_dict({"id": [], "title": [], "sentences": []})
    return datasets.concatenate_datasets(parts) if len(parts) > 1 else parts[0]
