"""Reruns, changed inputs, --overwrite and other runs' checkpoints: nothing lost, nothing stale.

Each stage output records what it was built from; a rerun reuses only output of the same
identity, rebuilds beside the old output under --overwrite, and never touches files it did
not write. Checkpoints belong to one run. The data-stage cases call the console script in
process (``cli.main``), the pretraining ones launch it as a user would.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from pipeline import checkpoint as ckpt
from pipeline import cli as console
from pipeline.corpus import load_documents
from pipeline.data import load_pretraining_dataset
from pipeline.errors import PipelineError
from pipeline.sample.build import DUMP, page_xml, write_dump
from pipeline.shards import file_sha256
from tests.conftest import PRETRAIN_FAST, cli


def kb(capsys, *args) -> tuple[int, str]:
    """``kowiki-bert ARGS`` in this process: (exit code, stderr)."""
    code = console.main([str(a) for a in args])
    return code, capsys.readouterr().err


def one_line_error(code: int, err: str, *needles: str) -> str:
    line = err.strip().splitlines()[-1]
    assert code == 2 and line.startswith("error: ") and "Traceback" not in err, err[-2000:]
    for needle in needles:
        assert needle in line, (needle, line)
    return line


def dump(path: Path, titles: list[str]) -> Path:
    """A small multistream dump with one short article per title."""
    xs = [page_xml(i + 1, title, 0, f"{title}은 시험용 문서이다. [[한국어]]로 쓴 이 문장은 충분히 길다.")
          for i, title in enumerate(titles)]
    write_dump(path, xs, "multistream")
    return path


SMALL = ["--pages-per-shard", "4", "--min-document-chars", "1"]


def test_extract_rebuilds_only_when_the_dump_content_changes(tmp_path, capsys):
    src, out = tmp_path / "kowiki-latest.xml.bz2", tmp_path / "corpus"
    dump(src, [f"옛 문서 {i}" for i in range(6)])
    assert kb(capsys, "extract", "--input", src, "--output", out, *SMALL)[0] == 0
    first = load_documents(out)["title"]
    dump(src, [f"새 문서 {i}" for i in range(7)])  # next week's dump, same path
    one_line_error(*kb(capsys, "extract", "--input", src, "--output", out, *SMALL), "other inputs", "source.sha256",
                   "--overwrite true")
    assert load_documents(out)["title"] == first
    assert kb(capsys, "extract", "--input", src, "--output", out, *SMALL, "--overwrite", "true")[0] == 0
    assert sorted(load_documents(out)["title"]) == sorted(f"새 문서 {i}" for i in range(7))
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["source"]["sha256"] == file_sha256(src) and not [p for p in tmp_path.glob(".corpus*") if p.suffix != ".lock"]  # only the writer locks stay
    moved = tmp_path / "elsewhere" / "same-dump.xml.bz2"
    moved.parent.mkdir()
    shutil.copy(src, moved)
    code, err = kb(capsys, "extract", "--input", moved, "--output", out, *SMALL)
    assert code == 0 and "0 shard(s) written, 2 skipped" in err  # the same content under another path


def test_overwrite_with_a_truncated_dump_keeps_the_finished_corpus(tmp_path, capsys):
    src, out = tmp_path / "d.xml.bz2", tmp_path / "corpus"
    dump(src, [f"문서 {i}" for i in range(60)])
    kb(capsys, "extract", "--input", src, "--output", out, *SMALL)
    before = {p.name: file_sha256(p) for p in out.iterdir()}
    newer = tmp_path / "newer.xml.bz2"
    newer.write_bytes(src.read_bytes()[:-300])  # next month's download, stopped early
    one_line_error(*kb(capsys, "extract", "--input", newer, "--output", out, *SMALL, "--overwrite", "true"), "newer.xml.bz2")
    assert {p.name: file_sha256(p) for p in out.iterdir()} == before
    assert len(load_documents(out)) == 60


def test_files_the_stage_did_not_write_are_refused_never_deleted(tmp_path, capsys):
    src, out = tmp_path / "d.xml.bz2", tmp_path / "corpus"
    dump(src, [f"문서 {i}" for i in range(6)])
    kb(capsys, "extract", "--input", src, "--output", out, *SMALL)
    (out / "photo-20240.jpg").write_bytes(b"\xff\xd8 a user's photo")
    (out / "notes.txt").write_text("mine")
    one_line_error(*kb(capsys, "extract", "--input", src, "--output", out, "--pages-per-shard", "3", "--overwrite", "true"),
                   "did not write", "notes.txt", "photo-20240.jpg")
    assert (out / "photo-20240.jpg").exists() and (out / "notes.txt").read_text() == "mine"
    assert len(load_documents(out)) == 6


def test_an_output_that_is_its_own_input_is_refused(sample_data, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_data["corpus"], corpus)
    one_line_error(*kb(capsys, "shard", "--corpus", corpus, "--tokenizer", sample_data["tokenizer"], "--output", corpus,
                       "--overwrite", "true"), "overlaps the input")
    one_line_error(*kb(capsys, "tokenizer", "--corpus", corpus, "--output", corpus / "tok", "--vocab-size", 500,
                       "--overwrite", "true"), "overlaps the input")
    assert len(load_documents(corpus)) == len(load_documents(sample_data["corpus"]))


def test_shard_refuses_or_rebuilds_when_the_corpus_changes(tmp_path, capsys):
    src, corpus, tok, out = tmp_path / "d.xml.bz2", tmp_path / "corpus", tmp_path / "tok", tmp_path / "shards"
    dump(src, [f"문서 {i}" for i in range(8)])
    kb(capsys, "extract", "--input", src, "--output", corpus, *SMALL)
    kb(capsys, "tokenizer", "--corpus", corpus, "--output", tok, "--vocab-size", 400, "--min-frequency", 1)
    shard_args = ["shard", "--corpus", corpus, "--tokenizer", tok, "--output", out, "--valid-fraction", "0",
                  "--max-seq-len", 32, "--docs-per-shard", 4, "--chunk-docs", 2]
    assert kb(capsys, *shard_args)[0] == 0
    old = load_pretraining_dataset(out)
    dump(src, [f"문서 {i}" for i in range(8)] + ["추가된 문서"])  # re-extracted with one more page
    kb(capsys, "extract", "--input", src, "--output", corpus, *SMALL, "--overwrite", "true")
    one_line_error(*kb(capsys, *shard_args), "other inputs", "corpus:")
    assert kb(capsys, *shard_args, "--overwrite", "true")[0] == 0
    assert len(load_pretraining_dataset(out)) > len(old)


def test_tokenizer_rerun_keeps_the_vocabulary_and_refuses_other_settings(sample_data, tmp_path, capsys):
    out = tmp_path / "tok"
    args = ["tokenizer", "--corpus", sample_data["corpus"], "--output", out, "--vocab-size", 600, "--min-frequency", 1,
            "--heldout-documents", 2]
    assert kb(capsys, *args)[0] == 0
    stamp = (out / "tokenizer.json").stat().st_mtime_ns, file_sha256(out / "tokenizer.json")
    code, err = kb(capsys, *args)
    assert code == 0 and "kept the vocabulary" in err
    assert ((out / "tokenizer.json").stat().st_mtime_ns, file_sha256(out / "tokenizer.json")) == stamp
    one_line_error(*kb(capsys, *args[:-4], "--vocab-size", 700, "--min-frequency", 1, "--heldout-documents", 2),
                   "settings.vocab_size: 600 -> 700", "--overwrite true")
    assert kb(capsys, *args[:-4], "--vocab-size", 700, "--min-frequency", 1, "--heldout-documents", 2,
              "--overwrite", "true")[0] == 0
    assert json.loads((out / "manifest.json").read_text())["identity"]["settings"]["vocab_size"] == 700
    assert not [p for p in tmp_path.glob(".tok*") if p.suffix != ".lock"]  # only the writer lock stays


def test_shard_needs_a_complete_tokenizer_and_writes_its_manifest_last(sample_data, tmp_path, capsys, monkeypatch):
    partial = tmp_path / "partial-tok"
    partial.mkdir()
    shutil.copy(sample_data["tokenizer"] / "tokenizer.json", partial / "tokenizer.json")  # killed mid-save
    one_line_error(*kb(capsys, "shard", "--corpus", sample_data["corpus"], "--tokenizer", partial, "--output",
                       tmp_path / "s1"), "not a complete")
    from pipeline import shard

    def killed(src, dst):
        raise RuntimeError("killed")  # as if the job died while copying the tokenizer

    monkeypatch.setattr(shard, "copy_tokenizer", killed)
    with pytest.raises(RuntimeError, match="killed"):
        console.main(["shard", "--corpus", str(sample_data["corpus"]), "--tokenizer", str(sample_data["tokenizer"]),
                      "--output", str(tmp_path / "s2"), "--docs-per-shard", "16", "--chunk-docs", "16"])
    assert list((tmp_path / "s2").glob("train-*.arrow")) and not (tmp_path / "s2" / "manifest.json").exists()


def test_damaged_manifest_and_record_are_one_line_errors_or_redone(sample_data, tmp_path, capsys):
    corpus = tmp_path / "corpus"
    shutil.copytree(sample_data["corpus"], corpus)
    (corpus / "manifest.json").write_text('{"kind": "corpus", "shards": [')
    one_line_error(*kb(capsys, "tokenizer", "--corpus", corpus, "--output", tmp_path / "tok"), "manifest.json is damaged")
    shards = tmp_path / "shards"
    shutil.copytree(sample_data["shards"], shards)
    (shards / "shard-00000.json").write_text("{not json")
    (shards / "manifest.json").unlink()
    with pytest.raises(PipelineError, match="incomplete"):
        load_pretraining_dataset(shards)


# --- training-time checks


def pretrain_args(data, out, *extra):
    return ["pretrain", "--data", data, "--output", out, "--max-steps", 4, "--save-every", 2,
            "--checkpoint.export_hf", "false", *PRETRAIN_FAST, *extra]


def test_pretrain_refuses_damaged_shards_and_a_swapped_tokenizer(sample_data, tmp_path):
    data = tmp_path / "shards"
    shutil.copytree(sample_data["shards"], data)
    file = data / "train-00000.arrow"
    raw = bytearray(file.read_bytes())
    raw[-100] ^= 0xFF  # same size, one bit pattern changed
    file.write_bytes(bytes(raw))
    proc = cli(*pretrain_args(data, tmp_path / "a"), check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "train-00000.arrow does not match its sha256" in line, proc.stderr[-2000:]
    shutil.rmtree(data)
    shutil.copytree(sample_data["shards"], data)
    tok = json.loads((data / "tokenizer" / "tokenizer.json").read_text())
    tok["model"]["vocab"]["새토큰"] = len(tok["model"]["vocab"])
    (data / "tokenizer" / "tokenizer.json").write_text(json.dumps(tok, ensure_ascii=False))
    proc = cli(*pretrain_args(data, tmp_path / "b"), check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "not the tokenizer the shards were made with" in line, proc.stderr[-2000:]
    status = json.loads((tmp_path / "b" / "status.json").read_text())
    assert status["state"] == "failed" and "tokenizer" in status["error"]


def test_checkpoints_of_another_run_are_never_resumed_or_pruned(sample_data, tmp_path):
    out = tmp_path / "run"
    cli(*pretrain_args(sample_data["shards"], out, "--seed", 0))
    before = {p.name: ckpt.checksums(p) for p in ckpt.candidates(out / "checkpoints")}
    assert sorted(before) == ["step-00000002", "step-00000004"]
    for resume in ("never", "auto"):
        proc = cli(*pretrain_args(sample_data["shards"], out, "--seed", 1, "--resume", resume, "--max-steps", 8), check=False)
        line = proc.stderr.strip().splitlines()[-1]
        assert proc.returncode == 2 and "checkpoints of another run" in line and "seed: 0 -> 1" in line, proc.stderr[-2000:]
    proc = cli(*pretrain_args(sample_data["shards"], out, "--model-size", "mini", "--max-steps", 8), check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "model.hidden_size: 128 -> 256" in line and "Traceback" not in proc.stderr
    other = tmp_path / "other"
    proc = cli(*pretrain_args(sample_data["shards"], other, "--seed", 1, "--resume", out / "checkpoints" / "step-00000004"),
               check=False)
    assert proc.returncode == 2 and "belongs to another run" in proc.stderr.strip().splitlines()[-1]
    proc = cli(*pretrain_args(sample_data["shards"], out, "--global-batch-size", 32, "--max-steps", 8), check=False)
    line = proc.stderr.strip().splitlines()[-1]  # a new batch size is a new run, started from the weights
    assert "global_batch_size: 16 -> 32" in line and f"--init-from {out / 'checkpoints' / 'step-00000004'}" in line
    assert {p.name: ckpt.checksums(p) for p in ckpt.candidates(out / "checkpoints")} == before


def test_every_checkpoint_damaged_stops_instead_of_restarting(sample_data, tmp_path):
    out = tmp_path / "run"
    cli(*pretrain_args(sample_data["shards"], out))
    for path in ckpt.candidates(out / "checkpoints"):
        (path / "model.safetensors").write_bytes(b"truncated")
    proc = cli(*pretrain_args(sample_data["shards"], out, "--max-steps", 6), check=False)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 2 and "every checkpoint" in line and "damaged" in line, proc.stderr[-2000:]
    assert sorted(p.name for p in ckpt.candidates(out / "checkpoints")) == ["step-00000002", "step-00000004"]


def test_prune_keeps_other_runs_checkpoints(tmp_path):
    mine, theirs = {"seed": 0}, {"seed": 1}
    for step, run in ((1, theirs), (2, theirs), (3, mine), (4, mine), (5, mine)):
        tmp = tmp_path / f".tmp-step-{step:08d}"
        tmp.mkdir()
        (tmp / "state.json").write_text(json.dumps({"step": step, "run": run}))
        ckpt.seal(tmp, ckpt.step_dir(tmp_path, step))
    ckpt.prune(tmp_path, keep_last=1, keep_every=0, run=mine)
    assert [p.name for p in ckpt.candidates(tmp_path)] == ["step-00000005", "step-00000002", "step-00000001"]


# --- inputs recognised positively, everything else one line


def _unknown_inputs(tmp_path: Path) -> dict:
    import bz2
    import gzip
    import lzma
    import zipfile

    (tmp_path / "pages.json").write_text(json.dumps([{"title": "김치", "text": "김치는 한국 음식이다."}], ensure_ascii=False))
    index = "".join(f"{600 + i * 10}:{i + 1}:문서 {i}\n" for i in range(50)).encode()
    (tmp_path / "kowiki-multistream-index.txt.bz2").write_bytes(bz2.compress(index))
    (tmp_path / "kowiki-multistream-index.txt").write_bytes(index)
    (tmp_path / "dump.xml.xz").write_bytes(lzma.compress(b"<mediawiki></mediawiki>"))
    with zipfile.ZipFile(tmp_path / "dump.zip", "w") as z:
        z.writestr("a.txt", "문장")
    (tmp_path / "model.bin").write_bytes(bytes(range(256)) * 16)
    (tmp_path / "image.gz").write_bytes(gzip.compress(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(200)))
    return {"pages.json": "JSON array", "kowiki-multistream-index.txt.bz2": "multistream index",
            "kowiki-multistream-index.txt": "multistream index", "dump.xml.xz": "xz archive",
            "dump.zip": "zip archive", "model.bin": "binary data", "image.gz": "binary data"}


def test_unknown_layouts_are_refused_with_what_they_look_like(tmp_path, capsys):
    for name, what in _unknown_inputs(tmp_path).items():
        out = tmp_path / f"out-{name}"
        one_line_error(*kb(capsys, "extract", "--input", tmp_path / name, "--output", out), name, what)
        assert not out.exists(), name


def test_utf8_error_names_its_line_and_zero_documents_is_an_error(tmp_path, capsys):
    text = tmp_path / "corpus.txt"
    lines = [f"{i}번째 문장은 충분히 긴 한국어 문장입니다.\n".encode() for i in range(3000)]
    lines[2500] = b"\xff\xfe broken \xe9\n"
    text.write_bytes(b"".join(lines))
    one_line_error(*kb(capsys, "extract", "--input", text, "--output", tmp_path / "o1"), "line 2501 is not valid UTF-8")
    short = tmp_path / "short.txt"
    short.write_text("짧다.\n\n작다.\n", encoding="utf-8")
    one_line_error(*kb(capsys, "extract", "--input", short, "--output", tmp_path / "o2"), "no documents kept of 2 pages",
                   "--min-document-chars")
    assert not (tmp_path / "o2" / "manifest.json").exists()


def test_non_string_fields_are_one_line_errors(tmp_path, capsys):
    import pyarrow as pa
    import pyarrow.parquet as pq

    jsonl = tmp_path / "pages.jsonl"
    jsonl.write_text('{"title": "김치", "text": "김치는 한국 음식이다. 아주 맛있는 음식이다."}\n{"title": "숫자", "text": 12345}\n')
    one_line_error(*kb(capsys, "extract", "--input", jsonl, "--output", tmp_path / "o1"), "line 2", "not a string")
    pq.write_table(pa.table({"title": ["김치"], "text": [3]}), tmp_path / "p.parquet")
    one_line_error(*kb(capsys, "extract", "--input", tmp_path / "p.parquet", "--output", tmp_path / "o2"),
                   "column 'text' is int64")


# --- numbers range-checked at load; task files checked before training


NUMBERS = [
    (["pretrain", "--train.micro_batch_size", "0"], "train.micro_batch_size"),
    (["pretrain", "--train.global_batch_size", "-8"], "train.global_batch_size"),
    (["pretrain", "--train.log_every", "0"], "train.log_every"),
    (["pretrain", "--eval.batch_size", "0"], "eval.batch_size"),
    (["pretrain", "--eval.batches", "0"], "eval.batches"),
    (["pretrain", "--checkpoint.keep_last", "0"], "checkpoint.keep_last"),
    (["pretrain", "--checkpoint.keep_last", "-1"], "checkpoint.keep_last"),
    (["pretrain", "--optim.lr", "nan"], "optim.lr"),
    (["finetune", "--eval_batch_size", "0"], "eval_batch_size"),
    (["finetune", "--max_train_examples", "-5"], "max_train_examples"),
    (["finetune", "--seed", "1,-2"], "seeds[1]"),
    (["shard", "--valid-fraction", "1"], "valid_fraction"),
    (["extract", "--num-proc", "0"], "num_proc"),
    (["fill-mask", "--top-k", "0", "a [MASK]"], "top_k"),
]
REQUIRED = {"pretrain": ["--data", "d", "--output", "o"], "finetune": ["--model", "m", "--task", "nsmc", "--train", "t",
            "--eval", "e", "--output", "o"], "shard": ["--corpus", "c", "--tokenizer", "t", "--output", "o"],
            "extract": ["--input", "i", "--output", "o"], "fill-mask": ["--model", "m"]}


@pytest.mark.parametrize("argv,field", NUMBERS, ids=[" ".join(a[:2]) for a, _ in NUMBERS])
def test_numbers_are_range_checked_when_the_config_loads(argv, field, capsys):
    one_line_error(*kb(capsys, *argv[:1], *REQUIRED[argv[0]], *argv[1:]), f"config field '{field}'", "out of range",
                   "use a value in")


def test_every_number_of_every_stage_has_a_range():
    import dataclasses
    import typing

    from pipeline.config import leaf_fields

    for name, (module, _) in console.STAGES.items():
        cls = __import__(module, fromlist=["Config"]).Config
        for dotted, (tp, f) in leaf_fields(cls).items():
            numeric = tp in (int, float) or typing.get_args(tp) in ((int,), (float,))
            if numeric:
                assert f.metadata.get("bounds"), f"{name}: {dotted} has no bounds"


def test_model_limits_and_task_files_are_one_line_errors(tiny_model, tmp_path, capsys):
    model = tiny_model / "model"
    sts = tmp_path / "sts.json"
    sts.write_text(json.dumps([{"sentence1": "가", "sentence2": "나", "labels": {"label": "high"}}]))
    one_line_error(*kb(capsys, "finetune", "--model", model, "--task", "klue-sts", "--train", sts, "--eval", sts,
                       "--output", tmp_path / "f1"), "not a number")
    one_class = tmp_path / "one.tsv"
    one_class.write_text("text\tlabel\n좋은 영화\tpos\n멋진 영화\tpos\n")
    one_line_error(*kb(capsys, "finetune", "--model", model, "--task", "generic", "--train", one_class, "--eval", one_class,
                       "--output", tmp_path / "f2"), "at least two classes")
    from pipeline.sample.build import REVIEWS_EVAL, REVIEWS_TRAIN

    one_line_error(*kb(capsys, "finetune", "--model", model, "--task", "nsmc", "--train", REVIEWS_TRAIN, "--eval",
                       REVIEWS_EVAL, "--output", tmp_path / "f3", "--max_seq_len", "1024"), "above the 512 positions")
    one_line_error(*kb(capsys, "fill-mask", "--model", model, "--top-k", "99999", "나는 [MASK] 간다."), "more than the")


def _small_fs(path: Path, size: str = "300k") -> Path:
    import subprocess

    path.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True).returncode:
        pytest.skip("cannot mount a small tmpfs here (needs root in a mount namespace) to fill or freeze a disk")
    return path


def test_full_and_read_only_disks_are_one_line_errors(sample_data, tmp_path, capsys):
    import subprocess

    disk = _small_fs(tmp_path / "disk", "16k")
    try:
        one_line_error(*kb(capsys, "extract", "--input", DUMP, "--output", disk / "corpus"),
                       "No space left on device", "free some space")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        one_line_error(*kb(capsys, "tokenizer", "--corpus", sample_data["corpus"], "--output", disk / "tok",
                           "--vocab-size", 500), "read-only")
    finally:
        subprocess.run(["umount", str(disk)])
