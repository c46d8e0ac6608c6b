"""Fits the tools users already have: model cards, the Hub, trackers, continued pretraining,
the downstream probe, datasets.load_from_disk, fill-mask words, label names, reference points."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForMaskedLM, AutoTokenizer

from pipeline.sample.build import REVIEWS_EVAL, REVIEWS_TRAIN
from tests.conftest import PRETRAIN_FAST, ROOT, child_env, cli


def card(folder) -> tuple[dict, str]:
    text = (folder / "README.md").read_text(encoding="utf-8")
    _, header, body = text.split("---\n", 2)
    return yaml.safe_load(header), body


def test_pretrain_exports_carry_a_model_card_and_curves(tiny_model):
    meta, body = card(tiny_model / "model")
    assert meta["language"] == ["ko"] and meta["pipeline_tag"] == "fill-mask" and meta["license"] == "cc-by-sa-4.0"
    assert meta["library_name"] == "transformers" and "wikipedia" in meta["datasets"]
    metrics = json.loads((tiny_model / "metrics.json").read_text())
    assert f"| MLM loss | {metrics['eval']['mlm_loss']:.4f} |" in body
    assert f"| NSP accuracy | {metrics['eval']['nsp_accuracy']:.4f} |" in body
    assert f"| steps | {metrics['step']:,} |" in body and f"| tokens seen | {metrics['tokens_seen']:,} |" in body
    assert "![pretraining loss and accuracy](curves.png)" in body
    assert (tiny_model / "model" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    logged = [json.loads(line) for line in (tiny_model / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "loss/total" in r] == [5, 10, 15, 20, 25, 30]
    meta, body = card(tiny_model / "checkpoints" / "step-00000015" / "hf")
    assert meta["pipeline_tag"] == "fill-mask" and "| steps | 15 |" in body


def test_finetune_card_label_names_and_no_false_comparison(tiny_model, tmp_path):
    cli("finetune", "--model", tiny_model / "model", "--task", "nsmc", "--train", REVIEWS_TRAIN, "--eval", REVIEWS_EVAL,
        "--output", tmp_path, "--epochs", "2", "--lr", "1e-3", "--batch-size", "16")
    meta, body = card(tmp_path / "model")
    assert meta["pipeline_tag"] == "text-classification" and "nsmc" in meta["tags"]
    assert meta["license"] == "cc-by-sa-4.0"  # the base model's, as its card states it
    assert "labels: negative, positive" in body and "not comparable with published scores" in body
    accuracy = json.loads((tmp_path / "metrics.json").read_text())["accuracy"]
    assert f"| accuracy | {accuracy:.4f} |" in body
    report = (tmp_path / "report.md").read_text()
    assert "KoBERT" not in report and "not the task's official evaluation set" in report
    assert (tmp_path / "model" / "learning_curve.png").exists()


def test_official_eval_set_shows_published_reference_points(tiny_model, shared_data, tmp_path):
    dev = shared_data / "klue" / "klue-sts-v1.1_dev.json"
    cli("finetune", "--model", tiny_model / "model", "--task", "klue-sts", "--train", dev, "--eval", dev,
        "--output", tmp_path, "--epochs", "1", "--max-train-examples", "64", "--lr", "1e-3")
    assert "Published reference points on this evaluation set: KLUE-BERT-base 90.9 Pearson" in (tmp_path / "report.md").read_text()
    assert "the task's official evaluation set" in card(tmp_path / "model")[1]


def one_line(proc) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and lines[-1].startswith("error: ") and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    return lines[-1]


def test_push_to_hub_refused_before_training_when_offline_or_unauthenticated(sample_data, tmp_path):
    args = ["pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", "--max-steps", 2, *PRETRAIN_FAST,
            "--push-to-hub", "me/kowiki-bert-tiny"]
    offline = one_line(cli(*args, check=False))
    assert "HF_HUB_OFFLINE is set" in offline and "hf upload me/kowiki-bert-tiny" in offline
    env = child_env(HF_HUB_OFFLINE="0", HF_HOME=str(tmp_path / "hf"))
    env.pop("HF_TOKEN", None)
    assert "no Hugging Face token" in one_line(cli(*args, check=False, env=env))
    assert not (tmp_path / "o" / "checkpoints").exists()  # refused before any step


def test_push_to_hub_unreachable_is_refused_before_training(tiny_model, tmp_path):
    env = child_env(HF_HUB_OFFLINE="0", HF_TOKEN="hf_" + "x" * 34, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    proc = cli("finetune", "--model", tiny_model / "model", "--task", "nsmc", "--train", REVIEWS_TRAIN, "--eval", REVIEWS_EVAL,
               "--output", tmp_path / "ft", "--epochs", "1", "--push-to-hub", "me/nsmc", check=False, env=env)
    line = one_line(proc)
    assert "cannot reach http://127.0.0.1:9" in line and "hf upload me/nsmc DIR" in line and "before training" in line
    assert not (tmp_path / "ft").exists()  # found out before any work, not after the whole training


def test_push_that_fails_at_the_end_keeps_the_model_and_says_how_to_upload(tiny_model, tmp_path):
    """The network can go away during training: the push at the end still keeps the model."""
    from pipeline import hub

    env = dict(HF_HUB_OFFLINE="0", HF_TOKEN="hf_" + "x" * 34, HF_ENDPOINT="http://127.0.0.1:9", HF_HOME=str(tmp_path / "hf"))
    code = ("import sys, pipeline.hub as h; h.check_can_push = lambda repo: None; "
            "from pipeline.cli import main; sys.exit(main())")
    proc = subprocess.run([sys.executable, "-c", code, "finetune", "--model", str(tiny_model / "model"), "--task", "nsmc",
                           "--train", str(REVIEWS_TRAIN), "--eval", str(REVIEWS_EVAL), "--output", str(tmp_path / "ft"),
                           "--epochs", "1", "--push-to-hub", "me/nsmc"], capture_output=True, text=True, timeout=600,
                          env=child_env(**env), cwd=ROOT)
    line = one_line(proc)
    assert "cannot reach http://127.0.0.1:9" in line and f"hf upload me/nsmc {tmp_path / 'ft' / 'model'}" in line
    assert (tmp_path / "ft" / "model" / "README.md").exists() and hub.REPO_ID


TRACKING = pytest.mark.skipif(not (importlib.util.find_spec("wandb") and importlib.util.find_spec("mlflow")),
                              reason="wandb and mlflow are not installed: pip install -e '.[track]'")


def mlflow_runs(store) -> dict:
    """run id -> {metric: [(step, value)]} read from an MLflow file store by MLflow itself."""
    import mlflow

    client = mlflow.MlflowClient(tracking_uri=store.resolve().as_uri())
    runs = {}
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id]):
            runs[run.info.run_id] = {k: sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, k))
                                     for k in run.data.metrics}
    return runs


@TRACKING
@pytest.mark.slow
def test_wandb_and_mlflow_runs_continue_after_resume(sample_data, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    out = tmp_path / "run"
    env = child_env(WANDB_MODE="offline", WANDB_SILENT="true")
    args = ["pretrain", "--data", sample_data["shards"], "--output", out, "--save-every", 5, "--train.log_every", 5,
            *PRETRAIN_FAST, "--log-with", "tensorboard,wandb,mlflow", "--project", "kowiki-test"]
    cli(*args, "--max-steps", 10, env=env)
    first = json.loads((out / "checkpoints" / "step-00000010" / "state.json").read_text())["trackers"]
    cli(*args, "--max-steps", 20, env=env)  # resumes at step 10 (a requeued job does the same)
    second = json.loads((out / "checkpoints" / "step-00000020" / "state.json").read_text())["trackers"]
    assert first == second and set(first) == {"wandb", "mlflow"}
    offline = sorted((out / "wandb").glob("offline-run-*"))
    assert len(offline) == 2 and all(p.name.endswith(first["wandb"]) for p in offline)
    assert all((p / f"run-{first['wandb']}.wandb").stat().st_size > 0 for p in offline)
    runs = mlflow_runs(out / "mlruns")
    assert list(runs) == [first["mlflow"]]  # one MLflow run, written by both jobs
    assert [s for s, _ in runs[first["mlflow"]]["loss/total"]] == [5, 10, 15, 20]
    assert json.loads((out / "run_info.json").read_text())["trackers"] == first


@TRACKING
def test_finetune_logs_each_epoch_to_mlflow(tiny_model, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")
    cli("finetune", "--model", tiny_model / "model", "--task", "nsmc", "--train", REVIEWS_TRAIN, "--eval", REVIEWS_EVAL,
        "--output", tmp_path, "--epochs", "2", "--lr", "1e-3", "--log-with", "mlflow")
    (metrics,) = mlflow_runs(tmp_path / "mlruns").values()
    history = json.loads((tmp_path / "history.json").read_text())["seeds"][0]["history"]
    assert metrics["accuracy"] == [(1, pytest.approx(history[0]["accuracy"])), (2, pytest.approx(history[1]["accuracy"]))]


def test_missing_tracker_package_is_a_one_line_error(sample_data, tmp_path):
    (tmp_path / "shadow" / "wandb").mkdir(parents=True)  # a wandb that cannot be imported: as good as absent
    (tmp_path / "shadow" / "wandb" / "__init__.py").write_text("raise ImportError('shadowed')\n")
    env = child_env(PYTHONPATH=str(tmp_path / "shadow"))
    line = one_line(cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", "--log-with", "wandb",
                        check=False, env=env))
    assert "--log-with wandb: not installed; pip install 'kowiki-bert[track]'" in line
    bad = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", "--log-with", "tensorbord", check=False)
    assert "'tensorbord' is not one of tensorboard, wandb, mlflow" in one_line(bad)


def position_embeddings(folder):
    return load_file(str(folder / "model.safetensors"))["bert.embeddings.position_embeddings.weight"]


@pytest.mark.slow
def test_two_phase_recipe_seq128_then_seq512_from_phase1_weights(sample_data, tiny_model, tmp_path):
    shards512 = tmp_path / "shards512"
    cli("shard", "--corpus", sample_data["corpus"], "--tokenizer", tiny_model / "model", "--output", shards512,
        "--max-seq-len", 512, "--docs-per-shard", 16, "--chunk-docs", 16, "--dupe-factor", 5, "--valid-fraction", "0.2")
    assert not (shards512 / "tokenizer" / "model.safetensors").exists()  # a model folder's tokenizer files only
    phase2 = tmp_path / "phase2"
    proc = cli("pretrain", "--data", shards512, "--output", phase2, "--init-from", tiny_model, "--max-steps", 3,
               "--global-batch-size", 4, "--micro-batch-size", 4, "--lr", "1e-6", "--eval.every", 0, "--eval.batches", 1,
               "--train.num_workers", 0, "--save-every", 3)
    assert f"initialized from {tiny_model}" in proc.stderr and "512 positions" in proc.stderr
    before, after = position_embeddings(tiny_model / "model"), position_embeddings(phase2 / "model")
    assert after.shape == (512, 128)
    assert (after - before).abs().max() < 1e-3  # phase 1's positions carried over (a fresh init differs by ~0.1)
    state = json.loads((phase2 / "checkpoints" / "step-00000003" / "state.json").read_text())
    assert state["run"]["init_from"] == str(tiny_model) and state["step"] == 3  # a new run: steps from 0
    AutoModelForMaskedLM.from_pretrained(str(phase2 / "model"))
    AutoTokenizer.from_pretrained(str(phase2 / "model"))
    assert "initialized from" in card(phase2 / "model")[1]


def test_init_from_is_checked_before_training(sample_data, tiny_model, tmp_path):
    other = tmp_path / "tok"
    cli("tokenizer", "--corpus", sample_data["corpus"], "--output", other, "--vocab-size", 1500, "--min-frequency", 1)
    cli("shard", "--corpus", sample_data["corpus"], "--tokenizer", other, "--output", tmp_path / "sh", "--valid-fraction", "0.2")
    args = ["pretrain", "--output", tmp_path / "o", "--max-steps", 2, *PRETRAIN_FAST]
    line = one_line(cli(*args, "--data", tmp_path / "sh", "--init-from", tiny_model, check=False))
    assert "vocabulary (2000 pieces) is not the shards' (1500 pieces" in line and "kowiki-bert shard --tokenizer" in line
    line = one_line(cli(*args, "--data", sample_data["shards"], "--init-from", tmp_path / "nothing-here", check=False))
    assert "--init-from" in line and "Hub id" in line
    line = one_line(cli(*args, "--data", sample_data["shards"], "--init-from", "klue/bert-base", check=False))
    assert "--init-from klue/bert-base" in line and "HF_HUB_OFFLINE" in line


def test_downstream_probe_during_pretraining_leaves_training_unchanged(sample_data, tmp_path):
    args = ["pretrain", "--data", sample_data["shards"], "--max-steps", 10, *PRETRAIN_FAST, "--eval.batches", 1]
    cli(*args, "--output", tmp_path / "plain")
    proc = cli(*args, "--output", tmp_path / "probed", "--eval.every", 5,
               "--eval.finetune", f"nsmc:{REVIEWS_TRAIN}:{REVIEWS_EVAL}", "--eval.finetune_examples", 64,
               "--eval.finetune_eval_examples", 64, "--eval.finetune_lr", "1e-3")
    assert "pretrain: probe at step 5: nsmc accuracy" in proc.stderr and "probe at step 10" in proc.stderr
    probe = json.loads((tmp_path / "probed" / "metrics.json").read_text())["probe"]
    assert probe["task"] == "nsmc" and [s for s, _ in probe["scores"]] == [5, 10]
    assert all(0.0 <= v <= 1.0 for _, v in probe["scores"])
    logged = [json.loads(line) for line in (tmp_path / "probed" / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logged if "probe/nsmc_accuracy" in r] == [5, 10]
    assert "Downstream probe" in card(tmp_path / "probed" / "model")[1]
    plain, probed = (load_file(str(tmp_path / d / "model" / "model.safetensors")) for d in ("plain", "probed"))
    assert all(torch.equal(plain[k], probed[k]) for k in plain)  # its own RNG: training is bit for bit the same
    bad = cli(*args, "--output", tmp_path / "bad", "--eval.finetune", "nsmc:missing.tsv", check=False)
    assert "TASK:TRAIN_FILE:EVAL_FILE" in one_line(bad)


def test_corpus_and_shards_open_with_datasets_load_from_disk(sample_data):
    import datasets

    corpus = datasets.load_from_disk(str(sample_data["corpus"]))
    manifest = json.loads((sample_data["corpus"] / "manifest.json").read_text())
    assert corpus.column_names == ["id", "title", "sentences"] and len(corpus) == manifest["counts"]["kept"]
    shards = datasets.load_from_disk(str(sample_data["shards"]))
    counts = json.loads((sample_data["shards"] / "manifest.json").read_text())["counts"]
    assert set(shards) == {"train", "valid"} and len(shards["train"]) == counts["train_examples"]
    assert len(shards["valid"]) == counts["valid_examples"] and shards["train"].column_names == ["ids", "a_len", "label"]


def test_fill_mask_answers_in_words_with_scores(tiny_model):
    from pipeline.fill_mask import fill_mask, load_masked_lm

    model, tok = load_masked_lm(tiny_model / "model")
    (answers,) = fill_mask(model, tok, "이순신은 [MASK] 중기의 무신이다.", top_k=200)
    pieces = [tok.convert_ids_to_tokens(a["token"]) for a in answers]
    assert any(p.startswith("##") for p in pieces)  # continuation pieces are among them ...
    assert not any(a["word"].startswith("##") for a in answers)  # ... and shown as words
    assert sum(a["score"] for a in answers) < 1.0 and answers[0]["score"] >= answers[-1]["score"]
    proc = cli("fill-mask", "--model", tiny_model / "model", "이순신은 [MASK] 중기의 무신이다.", "--top-k", 50)
    shown = proc.stdout.splitlines()[1].split(": ", 1)[1].split("  ")  # "  [MASK] 1: ", then '"word" 12.3%' each
    assert len(shown) == 50 and all(re.fullmatch(r'"[^"]+" \d+\.\d%', w) for w in shown), proc.stdout
    assert not [w for w in shown if w.startswith('"##')], proc.stdout
    assert "  best: 이순신은" in proc.stdout


def test_help_is_fast_because_it_imports_no_torch():
    code = ("import sys, contextlib, io; from pipeline.cli import main\n"
            "for stage in ('extract', 'tokenizer', 'shard', 'pretrain', 'finetune', 'fill-mask', 'run'):\n"
            "    with contextlib.redirect_stdout(io.StringIO()):\n"
            "        try: main([stage, '--help'])\n"
            "        except SystemExit: pass\n"
            "print(sorted(m for m in ('torch', 'transformers', 'accelerate', 'deepspeed', 'datasets') if m in sys.modules))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env(), cwd=ROOT)
    assert proc.stdout.strip() == "[]", proc.stderr[-2000:]


def test_init_from_a_masked_lm_without_nsp_head_says_what_it_initialized(sample_data, tiny_model, tmp_path):
    mlm = tmp_path / "mlm"
    AutoModelForMaskedLM.from_pretrained(str(tiny_model / "model")).save_pretrained(str(mlm))  # no pooler, no NSP head
    AutoTokenizer.from_pretrained(str(tiny_model / "model")).save_pretrained(str(mlm))
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", "--init-from", mlm, "--max-steps", 2,
               *PRETRAIN_FAST)
    line = next(x for x in proc.stderr.splitlines() if "initialized from" in x)
    assert "newly initialized:" in line and "cls.seq_relationship.weight" in line and "bert.pooler.dense.weight" in line
    before = load_file(str(mlm / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    after = load_file(str(tmp_path / "o" / "model" / "model.safetensors"))["bert.embeddings.word_embeddings.weight"]
    assert (after - before).abs().max() < 0.05  # the encoder came from the masked LM


def test_card_states_the_corpus_license_and_base_the_run_used(tiny_model, tmp_path):
    # a corpus that is not Wikipedia: the sample reviews as plain text, one review per document
    reviews = [line.split("\t")[1] for line in REVIEWS_TRAIN.read_text(encoding="utf-8").splitlines()[1:]]
    text = tmp_path / "reviews.txt"
    text.write_text("\n\n".join(reviews) + "\n", encoding="utf-8")
    cli("extract", "--input", text, "--output", tmp_path / "corpus", "--min-document-chars", "5", "--min-sentence-chars", "2")
    cli("shard", "--corpus", tmp_path / "corpus", "--tokenizer", tiny_model / "model", "--output", tmp_path / "shards",
        "--valid-fraction", "0.1")
    run = ["--data", tmp_path / "shards", "--max-steps", 2, *PRETRAIN_FAST, "--checkpoint.save_every", 0]
    cli("pretrain", "--output", tmp_path / "own", *run)
    meta, body = card(tmp_path / "own" / "model")
    assert meta["license"] == "other" and "datasets" not in meta, meta
    assert "pretrained with kowiki-bert on the text corpus (`reviews.txt`; 480 documents" in body
    assert "Wikipedia" not in body and "state it with `--license` before publishing" in body
    # --license wins; --init-from is named as the base and its license as applying too
    cli("pretrain", "--output", tmp_path / "cont", *run, "--license", "cc0-1.0", "--init-from", tiny_model / "model")
    meta, body = card(tmp_path / "cont" / "model")
    assert meta["license"] == "cc0-1.0" and f"continued from `{tiny_model / 'model'}`" in body
    assert "released under cc0-1.0" in body and "its license applies too" in body
    # the Wikipedia sample's own card keeps CC BY-SA and the wikipedia dataset tag
    meta, body = card(tiny_model / "model")
    assert meta["license"] == "cc-by-sa-4.0" and meta["datasets"] == ["wikipedia"]
    assert "the Korean Wikipedia (`kowiki-sample-pages-articles-multistream.xml.bz2`; 20 documents" in body
