"""The shard stage's storage, determinism and resume, and the MLM+NSP collator."""

import json
import shutil

import numpy as np
import pytest
import torch

from pipeline.data import MLMNSPCollator, epoch_order, load_pretraining_dataset, load_tokenizer, micro_batch_indices
from pipeline.errors import PipelineError
from pipeline.shards import file_sha256
from tests.conftest import cli


def arrow_hashes(out):
    return {p.name: file_sha256(p) for p in sorted(out.glob("*.arrow"))}


def test_example_layout_and_token_types(sample_data):
    ds = load_pretraining_dataset(sample_data["shards"])
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    assert len(ds) > 200
    for i in range(0, len(ds), 37):
        ex = ds[i]
        ids, tt = ex["input_ids"], ex["token_type_ids"]
        seps = np.flatnonzero(ids == tok.sep_token_id)
        assert ids[0] == tok.cls_token_id and len(seps) == 2 and seps[1] == len(ids) - 1
        assert (tt[: seps[0] + 1] == 0).all() and (tt[seps[0] + 1:] == 1).all()
        assert (ex["attention_mask"] == 1).all() and len(ids) <= 128
        assert ex["next_sentence_label"] in (0, 1)
    labels = [ds[i]["next_sentence_label"] for i in range(len(ds))]
    assert 0.35 < np.mean(labels) < 0.65


def test_storage_is_compact(sample_data):
    manifest = json.loads((sample_data["shards"] / "manifest.json").read_text())
    assert manifest["id_dtype"] == "uint16"
    size = sum(p.stat().st_size for p in sample_data["shards"].glob("*.arrow"))
    tokens = manifest["counts"]["train_tokens"] + manifest["counts"]["valid_tokens"]
    assert size / tokens < 2.2
    import pyarrow as pa

    table = pa.ipc.open_stream(pa.memory_map(str(next(sample_data["shards"].glob("train-*.arrow"))))).read_all()
    assert table.schema.names == ["ids", "a_len", "label"]


def test_validation_split_is_by_document(sample_data):
    assert len(load_pretraining_dataset(sample_data["shards"], "valid")) > 0


def test_other_tokenizer_is_refused(sample_data, tmp_path):
    other = tmp_path / "tok"
    shutil.copytree(sample_data["tokenizer"], other)
    data = json.loads((other / "tokenizer.json").read_text())
    data["model"]["vocab"]["새토큰"] = len(data["model"]["vocab"])
    (other / "tokenizer.json").write_text(json.dumps(data, ensure_ascii=False))
    with pytest.raises(PipelineError, match="another tokenizer"):
        load_pretraining_dataset(sample_data["shards"], tokenizer=other)


def test_deterministic_across_processes_and_tasks_and_resumable(sample_data, tmp_path):
    args = ["--corpus", sample_data["corpus"], "--tokenizer", sample_data["tokenizer"], "--max-seq-len", "64",
            "--docs-per-shard", "4", "--chunk-docs", "2", "--dupe-factor", "2", "--valid-fraction", "0.2"]
    cli("shard", *args, "--output", tmp_path / "a")
    cli("shard", *args, "--output", tmp_path / "b", "--num-proc", "2")
    for i in range(3):
        cli("shard", *args, "--output", tmp_path / "c", "--num-tasks", "3", "--task-index", str(i))
    ref = arrow_hashes(tmp_path / "a")
    assert len(ref) == 10 and ref == arrow_hashes(tmp_path / "b") == arrow_hashes(tmp_path / "c")
    out = tmp_path / "a"
    (out / "shard-00001.json").unlink()
    (out / "train-00001.arrow").write_bytes(b"half")  # a half-written shard from a killed run
    proc = cli("shard", *args, "--output", out)
    assert "1 shard(s) written, 4 skipped" in proc.stderr
    assert arrow_hashes(out) == ref


def test_zero_tallies_survive_in_the_manifest(sample_data, tmp_path):
    # Every shard has 0 valid examples; the task that finishes the set still reports them.
    args = ["--corpus", sample_data["corpus"], "--tokenizer", sample_data["tokenizer"], "--max-seq-len", "64",
            "--docs-per-shard", "10", "--chunk-docs", "5", "--valid-fraction", "0", "--output", tmp_path, "--num-tasks", "2"]
    cli("shard", *args, "--task-index", "0")
    proc = cli("shard", *args, "--task-index", "1")
    assert " / 0 valid examples" in proc.stderr
    counts = json.loads((tmp_path / "manifest.json").read_text())["counts"]
    assert counts["valid_examples"] == counts["valid_tokens"] == 0 and counts["train_examples"] > 0


def batch(collator, ds, n=64, start=0):
    return collator([ds[i] for i in range(start, start + n)])


def test_masking_rates_and_special_tokens(sample_data):
    ds = load_pretraining_dataset(sample_data["shards"])
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    collator = MLMNSPCollator(tok, mlm_probability=0.15, seed=3)
    special = torch.tensor([tok.cls_token_id, tok.sep_token_id, tok.pad_token_id])
    masked = replaced_mask = kept = random_tok = real = 0
    for start in range(0, len(ds) - 64, 64):
        b = batch(collator, ds, 64, start)
        originals = [torch.as_tensor(ds[i]["input_ids"]) for i in range(start, start + 64)]
        orig = torch.full_like(b["input_ids"], tok.pad_token_id)
        for r, o in enumerate(originals):
            orig[r, : len(o)] = o
        chosen = b["labels"] != -100
        assert not torch.isin(orig[chosen], special).any(), "a special token was masked"
        assert (b["labels"][chosen] == orig[chosen]).all()
        real += int((b["attention_mask"].bool() & ~torch.isin(orig, special)).sum())
        masked += int(chosen.sum())
        replaced_mask += int((b["input_ids"][chosen] == tok.mask_token_id).sum())
        kept += int((b["input_ids"][chosen] == orig[chosen]).sum())
        random_tok += int(((b["input_ids"][chosen] != orig[chosen]) & (b["input_ids"][chosen] != tok.mask_token_id)).sum())
        assert (b["input_ids"][b["attention_mask"] == 0] == tok.pad_token_id).all()
    assert abs(masked / real - 0.15) < 0.01
    assert abs(replaced_mask / masked - 0.8) < 0.03
    assert abs(random_tok / masked - 0.1) < 0.03 and abs(kept / masked - 0.1) < 0.03


def test_masking_depends_only_on_seed_epoch_index(sample_data):
    ds = load_pretraining_dataset(sample_data["shards"])
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    a = MLMNSPCollator(tok, seed=1)
    b = MLMNSPCollator(tok, seed=1)
    examples = [ds[i] for i in (5, 9, 11)]
    first = a(examples)
    again = b([examples[1], examples[0], examples[2]])  # other batch composition, same example
    assert torch.equal(first["labels"][0], again["labels"][1])
    b.epoch = 1
    assert not torch.equal(first["labels"], b(examples)["labels"])


def test_whole_word_masking_keeps_pieces_together(sample_data):
    ds = load_pretraining_dataset(sample_data["shards"])
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    collator = MLMNSPCollator(tok, seed=0, whole_word=True)
    cont = collator.continuation
    b = batch(collator, ds, 64)
    for row in range(64):
        ids = torch.as_tensor(ds[row]["input_ids"]).numpy()
        chosen = (b["labels"][row, : len(ids)] != -100).numpy()
        for pos in range(1, len(ids) - 1):
            if cont[ids[pos]] and not (ids[pos - 1] in (tok.cls_token_id, tok.sep_token_id)):
                assert chosen[pos] == chosen[pos - 1], "a word was split by whole-word masking"


def test_data_order_each_example_once_per_epoch_for_any_world_size():
    n, global_batch, micro = 103, 12, 3
    for world, accum in ((1, 4), (2, 2), (4, 1)):
        order = epoch_order(n, seed=7, epoch=0)
        seen = [int(i) for s in range(n // global_batch) for r in range(world)
                for part in micro_batch_indices(order, s, global_batch, micro, accum, r, world) for i in part]
        assert sorted(seen) == sorted(order[: (n // global_batch) * global_batch].tolist())
    # elastic: 3 steps on 1 process, then the rest on 2 processes
    order = epoch_order(n, 7, 0)
    first = [int(i) for s in range(3) for part in micro_batch_indices(order, s, 12, 3, 4, 0, 1) for i in part]
    rest = [int(i) for s in range(3, 8) for r in range(2) for part in micro_batch_indices(order, s, 12, 3, 2, r, 2) for i in part]
    assert len(set(first + rest)) == len(first + rest) == 96
