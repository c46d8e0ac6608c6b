"""Exports load as a BERT user expects under transformers 4.x (a real 4.x install) and 5.x."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from pipeline.sample.build import REVIEWS_EVAL, REVIEWS_TRAIN
from tests.conftest import ROOT, child_env, cli

# The oldest transformers pyproject allows, and the last 4.x line.
OLD = ["4.45.2", "4.57.6"]
CACHE = Path(os.environ.get("KOWIKI_TEST_CACHE", Path.home() / ".cache" / "kowiki-bert-tests"))
TEXTS = ["이순신은 조선 중기의 무신이다.", "대한민국의 수도는 서울이다. 2026년 11월", "정말 재미있는 영화였어요 ㅋㅋ 최고!"]

# Run in the other transformers: tokenizers (fast and slow), fill-mask and both heads; prints JSON.
PROBE = r'''
import json, sys, torch, transformers
from transformers import AutoTokenizer, AutoModelForMaskedLM, AutoModelForSequenceClassification, pipeline
pre, clf_dir, texts = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
fast, slow = AutoTokenizer.from_pretrained(pre), AutoTokenizer.from_pretrained(pre, use_fast=False)
mlm = AutoModelForMaskedLM.from_pretrained(pre).eval()
fill = pipeline("fill-mask", model=mlm, tokenizer=fast)
clf = AutoModelForSequenceClassification.from_pretrained(clf_dir).eval()
clf_tok = AutoTokenizer.from_pretrained(clf_dir)
with torch.no_grad():
    logits = clf(**clf_tok(texts[2], return_tensors="pt")).logits[0].tolist()
print(json.dumps({"version": transformers.__version__, "fast": type(fast).__name__, "slow": type(slow).__name__,
                  "fast_ids": [fast(t)["input_ids"] for t in texts], "slow_ids": [slow(t)["input_ids"] for t in texts],
                  "fill": [(a["token"], round(a["score"], 4)) for a in fill("이순신은 [MASK] 중기의 무신이다.", top_k=3)],
                  "labels": clf.config.id2label, "logits": logits}))
'''


def old_transformers(version: str) -> Path:
    """``transformers==version`` and its own dependencies (tokenizers, huggingface_hub) in a
    folder put first on PYTHONPATH; torch and the rest come from this environment."""
    target = CACHE / f"transformers-{version}"
    if (target / ".complete").exists():
        return target
    tmp = target.with_name(f"{target.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--disable-pip-version-check", "--target", str(tmp),
                           f"transformers=={version}"], capture_output=True, text=True, timeout=600)
    if proc.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        pytest.skip(f"cannot install transformers=={version} from the package registry: {proc.stderr.strip()[-300:]}")
    (tmp / ".complete").touch()
    shutil.rmtree(target, ignore_errors=True)
    tmp.rename(target)
    return target


def probe(model_dir: Path, clf_dir: Path, pythonpath: Path | None) -> dict:
    env = child_env(**({"PYTHONPATH": str(pythonpath)} if pythonpath else {}))
    proc = subprocess.run([sys.executable, "-c", PROBE, str(model_dir), str(clf_dir), json.dumps(TEXTS)],
                          capture_output=True, text=True, env=env, cwd=ROOT, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def classifier(tiny_model, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("nsmc")
    cli("finetune", "--model", tiny_model / "model", "--task", "nsmc", "--train", REVIEWS_TRAIN, "--eval", REVIEWS_EVAL,
        "--output", out, "--epochs", "1", "--lr", "1e-3", "--batch-size", "16")
    return out / "model"


@pytest.fixture(scope="module")
def today(tiny_model, classifier) -> dict:
    return probe(tiny_model / "model", classifier, None)


def test_tokenizer_files_name_a_bert_class_with_korean_safe_settings(tiny_model, classifier):
    for folder in (tiny_model / "model", tiny_model / "checkpoints" / "step-00000030" / "hf", classifier):
        config = json.loads((folder / "tokenizer_config.json").read_text())
        assert config["tokenizer_class"] == "BertTokenizer"
        assert config["do_lower_case"] is False and config["strip_accents"] is False
        assert not {"is_local", "local_files_only", "backend"} & set(config)
        vocab = (folder / "vocab.txt").read_text(encoding="utf-8").splitlines()
        assert vocab[:1] == ["[PAD]"] and len(vocab) == json.loads((folder / "config.json").read_text())["vocab_size"]


def test_loads_under_transformers_5(today):
    assert today["version"].startswith("5.") == transformers.__version__.startswith("5.")
    assert today["fast_ids"] == today["slow_ids"]
    assert today["labels"] == {"0": "negative", "1": "positive"}


@pytest.mark.slow
@pytest.mark.parametrize("version", OLD)
def test_loads_alike_under_a_real_transformers_4x(version, tiny_model, classifier, today):
    old = probe(tiny_model / "model", classifier, old_transformers(version))
    assert old["version"] == version
    assert (old["fast"], old["slow"]) == ("BertTokenizerFast", "BertTokenizer")
    assert old["fast_ids"] == old["slow_ids"] == today["fast_ids"]  # slow, fast and 5.x: the same ids
    assert [t for t, _ in old["fill"]] == [t for t, _ in today["fill"]]
    assert [s for _, s in old["fill"]] == pytest.approx([s for _, s in today["fill"]], abs=1e-3)
    assert old["labels"] == {"0": "negative", "1": "positive"}
    assert old["logits"] == pytest.approx(today["logits"], abs=1e-4)
