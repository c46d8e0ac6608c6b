"""The fine-tune stage on every task layout, its outputs and its input errors."""

import json
import shutil

import pytest
from transformers import AutoModelForSequenceClassification

from pipeline.sample.build import REVIEWS_EVAL, REVIEWS_TRAIN
from tests.conftest import SHARED, cli

FAST = ["--epochs", "2", "--lr", "1e-3", "--batch-size", "16"]


def finetune(model, task, train, eval_file, out, *extra, check=True):
    return cli("finetune", "--model", model, "--task", task, "--train", train, "--eval", eval_file, "--output", out,
               *FAST, *extra, check=check)


def check_outputs(out, main_metric):
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())["seeds"][0]
    best = max(history["history"], key=lambda row: row[main_metric])
    assert metrics[main_metric] == pytest.approx(best[main_metric]) and metrics["best_epoch"] == best["epoch"]
    report = (out / "report.md").read_text()
    assert "| epoch | train_loss | eval_loss |" in report and report.count("\n| ") >= 3
    assert (out / "learning_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    model = AutoModelForSequenceClassification.from_pretrained(str(out / "model"))
    assert (out / "model" / "tokenizer.json").exists()
    return metrics, model


def test_nsmc_tsv(tiny_model, tmp_path):
    finetune(tiny_model / "model", "nsmc", REVIEWS_TRAIN, REVIEWS_EVAL, tmp_path)
    metrics, model = check_outputs(tmp_path, "accuracy")
    assert {"accuracy", "macro_f1", "mcc", "eval_loss"} <= set(metrics)
    assert model.config.id2label == {0: "negative", 1: "positive"}  # what the files write as 0 and 1


def test_init_random_is_the_same_architecture(tiny_model, tmp_path):
    finetune(tiny_model / "model", "nsmc", REVIEWS_TRAIN, REVIEWS_EVAL, tmp_path, "--init", "random", "--epochs", "1")
    model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "model"))
    assert model.config.hidden_size == 128 and model.config.num_hidden_layers == 2
    assert "init: random" in (tmp_path / "report.md").read_text()


def klue_files(tmp_path, kind, n=48):
    import random

    rng = random.Random(0)
    rows = []
    for i in range(n):
        if kind == "nli":
            label = ["entailment", "neutral", "contradiction"][i % 3]
            rows.append({"guid": f"klue-nli-{i}", "premise": f"오늘 서울의 날씨는 {i}도로 맑다.",
                         "hypothesis": ["서울은 맑다.", "서울에 사람이 많다.", "서울에 비가 온다."][i % 3], "gold_label": label})
        else:
            score = round(rng.uniform(0, 5), 1)
            rows.append({"guid": f"klue-sts-{i}", "sentence1": f"숙소가 깨끗하고 {i}번 방이 좋았다.",
                         "sentence2": "숙소가 깨끗했다." if score > 2.5 else "음식이 맛없었다.",
                         "labels": {"label": score, "real-label": score, "binary-label": int(score >= 3)}})
    for name, part in (("train.json", rows[:36]), ("dev.json", rows[36:])):
        (tmp_path / name).write_text(json.dumps(part, ensure_ascii=False), encoding="utf-8")
    return tmp_path / "train.json", tmp_path / "dev.json"


def test_klue_nli_json(tiny_model, tmp_path):
    train, dev = klue_files(tmp_path, "nli")
    finetune(tiny_model / "model", "klue-nli", train, dev, tmp_path / "out")
    metrics, model = check_outputs(tmp_path / "out", "accuracy")
    assert model.config.num_labels == 3 and -1 <= metrics["mcc"] <= 1


def test_klue_sts_json_regression(tiny_model, tmp_path):
    train, dev = klue_files(tmp_path, "sts")
    finetune(tiny_model / "model", "klue-sts", train, dev, tmp_path / "out")
    metrics, model = check_outputs(tmp_path / "out", "pearson")
    assert {"pearson", "spearman", "f1"} <= set(metrics) and model.config.num_labels == 1


def test_generic_pairs_tsv_and_single_jsonl_with_seeds(tiny_model, tmp_path):
    lines = ["문장\t짝\t정답"] + [f"날씨가 {i}도이다\t{'덥다' if i > 20 else '춥다'}\t{'yes' if i > 20 else 'no'}" for i in range(40)]
    (tmp_path / "p.tsv").write_text("\n".join(lines) + "\n", encoding="utf-8")
    finetune(tiny_model / "model", "generic", tmp_path / "p.tsv", tmp_path / "p.tsv", tmp_path / "pairs",
             "--text-column", "문장", "--pair-column", "짝", "--label-column", "정답")
    _, model = check_outputs(tmp_path / "pairs", "accuracy")
    assert set(model.config.id2label.values()) == {"no", "yes"}
    rows = [json.dumps({"text": t, "label": lab}, ensure_ascii=False)
            for t, lab in [("정말 재미있다", "pos"), ("너무 지루하다", "neg")] * 12]
    (tmp_path / "s.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    finetune(tiny_model / "model", "generic", tmp_path / "s.jsonl", tmp_path / "s.jsonl", tmp_path / "single",
             "--seed", "1,2", "--epochs", "1")
    metrics = json.loads((tmp_path / "single" / "metrics.json").read_text())
    assert set(metrics["per_seed"]) == {"1", "2"} and "accuracy" in metrics["std"]
    assert "±" in (tmp_path / "single" / "report.md").read_text()
    assert (tmp_path / "single" / "seed-1" / "model").is_dir() and (tmp_path / "single" / "model").is_dir()


@pytest.mark.parametrize("case", ["wrong column", "unknown label", "empty file", "model without tokenizer"])
def test_bad_input_fails_before_training(tiny_model, tmp_path, case):
    model, train, dev = tiny_model / "model", REVIEWS_TRAIN, REVIEWS_EVAL
    if case == "wrong column":
        train = tmp_path / "t.tsv"
        train.write_text("id\ttext\tlabel\n1\t좋다\t1\n", encoding="utf-8")
        pattern = "no 'document' field"
    elif case == "unknown label":
        dev = tmp_path / "d.tsv"
        dev.write_text("id\tdocument\tlabel\n1\t좋다\t5\n", encoding="utf-8")
        pattern = "unknown label '5'"
    elif case == "empty file":
        train = tmp_path / "e.tsv"
        train.write_text("")
        pattern = "the file is empty"
    else:
        model = tmp_path / "m"
        shutil.copytree(tiny_model / "model", model)
        for f in [*model.glob("tokenizer*"), model / "vocab.txt"]:  # every tokenizer file of the export
            f.unlink()
        pattern = "no tokenizer files"
    proc = finetune(model, "nsmc", train, dev, tmp_path / "out", check=False)
    assert proc.returncode == 2 and pattern in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out" / "metrics.json").exists()
