"""The fixed evaluation yardstick, the context-free baseline and the masking levers."""

import json

import numpy as np
import pytest

from pipeline.config import ConfigError
from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer
from pipeline.yardstick import baseline, context_free_loss, eval_collator
from tests.conftest import PRETRAIN_FAST, cli


def test_context_free_loss_is_the_bayes_predictor_loss_measured_on_masked_batches(sample_data):
    """The closed form against brute force: mask the eval examples under many seeds, and score
    each masked token with the posterior over the whole vocabulary, normalized numerically."""
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    train, valid = (load_pretraining_dataset(sample_data["shards"], split) for split in ("train", "valid"))
    examples = [valid[i] for i in range(len(valid))]
    collator = eval_collator(tok, 128)
    ids = collator.random_ids
    counts = train.token_counts(collator.vocab_size, 10**9)[ids] + 0.5
    p = counts / counts.sum()
    where = {int(t): j for j, t in enumerate(ids)}
    losses, answers = [], []
    for seed in range(120):
        collator.seed = seed
        for ex in examples:
            shown, labels = collator.mask_example(ex["input_ids"], ex["index"])
            for pos in np.flatnonzero(labels != -100):
                w, t = where[int(labels[pos])], int(shown[pos])
                if t == tok.mask_token_id:
                    post = p
                else:  # P(t | w') = 0.1 [w' = t] + 0.1 / R, for every w'
                    like = np.full(len(p), 0.1 / len(p))
                    like[where[t]] += 0.1
                    post = p * like / (p * like).sum()
                losses.append(-np.log(post[w]))
                answers.append(w)
    q = np.bincount(answers, minlength=len(p)).astype(float)
    # the closed form is the expectation given the answers: the sample mean may stray from it
    # by its standard error (bounded by the spread of the losses), never by more than 4 of them
    assert len(losses) > 3000
    stderr = np.std(losses) / np.sqrt(len(losses))
    assert stderr < 0.015  # tight enough to catch a wrong term (each is worth 0.1 nats or more)
    assert context_free_loss(p, q) == pytest.approx(np.mean(losses), abs=4 * stderr)
    # all-[MASK] corruption leaves only the unigram; keeping every token costs nothing
    assert context_free_loss(p, q, 1.0, 0.0) == pytest.approx(-(q / q.sum() * np.log(p)).sum())
    assert context_free_loss(p, q, 0.0, 0.0) == pytest.approx(0.0)
    base = baseline(train, examples, collator)
    labels = [e["next_sentence_label"] for e in examples]
    assert base["not_next_share"] == pytest.approx(np.mean(labels))
    assert base["unigram_mlm_loss"] > base["context_free_mlm_loss"]  # what the kept 10% buys


def test_corruption_shares_do_what_they_say(sample_data):
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    valid = load_pretraining_dataset(sample_data["shards"], "valid")
    examples = [valid[i] for i in range(len(valid))]

    def shown(shares):
        collator = MLMNSPCollator(tok, 0.15, seed=1, shares=shares)
        kinds = []
        for ex in examples:
            out, labels = collator.mask_example(ex["input_ids"], ex["index"])
            pos = labels != -100
            kinds += ["mask" if o == tok.mask_token_id else "kept" if o == lab else "random"
                      for o, lab in zip(out[pos], labels[pos])]
        return {k: kinds.count(k) / len(kinds) for k in ("mask", "kept", "random")}

    assert shown((1.0, 0.0)) == {"mask": 1.0, "kept": 0.0, "random": 0.0}
    assert shown((0.0, 0.0)) == {"mask": 0.0, "kept": 1.0, "random": 0.0}
    bert = shown((0.8, 0.1))
    assert bert["mask"] == pytest.approx(0.8, abs=0.05) and bert["random"] == pytest.approx(0.1, abs=0.04)


def test_shares_that_exceed_one_are_refused_in_one_line(sample_data, tmp_path):
    proc = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", "--train.mask_share", "0.9",
               "--train.random_share", "0.2", check=False)
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "train.random_share" in proc.stderr
    with pytest.raises(ConfigError):
        from pipeline import pretrain
        from pipeline.config import load_config

        load_config(pretrain.Config, None, {"data": "d", "output": "o", "train.mask_share": 1.5})


def test_the_yardstick_does_not_move_with_the_training_masking(sample_data, tiny_model, tmp_path):
    """The same weights (lr 1e-12: one step changes nothing measurable) evaluated after training
    with other masking settings and another seed: the same eval loss, baseline and NotNext share."""
    runs = {"bert": [], "other": ["--train.mlm_probability", "0.3", "--train.mask_share", "1.0", "--train.random_share",
                                  "0", "--train.whole_word_mask", "true", "--seed", "5"]}
    ev = {}
    for name, extra in runs.items():
        out = tmp_path / name
        cli("pretrain", "--data", sample_data["shards"], "--output", out, "--init-from", tiny_model / "model",
            "--max-steps", 1, *PRETRAIN_FAST, "--lr", "1e-12", "--checkpoint.export_hf", "false", *extra)
        metrics = json.loads((out / "metrics.json").read_text())
        ev[name] = metrics["eval"]
        assert "escape_step" in metrics
    assert ev["bert"]["mlm_loss"] == pytest.approx(ev["other"]["mlm_loss"], abs=1e-4)
    for key in ("context_free_mlm_loss", "nsp_not_next_share"):
        assert ev["bert"][key] == ev["other"][key]
    assert ev["bert"]["context_free_gap"] == pytest.approx(ev["bert"]["mlm_loss"] - ev["bert"]["context_free_mlm_loss"])


def test_nsp_at_the_majority_share_is_reported_as_not_learned():
    from pipeline.pretrain import nsp_note

    assert "not learned" in nsp_note({"eval": {"nsp_accuracy": 0.53, "nsp_not_next_share": 0.54}})
    assert nsp_note({"eval": {"nsp_accuracy": 0.91, "nsp_not_next_share": 0.54}}) is None
    assert nsp_note({"eval": {}}) is None


def test_pretraining_without_dropout_exports_the_fine_tuning_dropout(sample_data, tmp_path):
    from transformers import BertConfig

    out = tmp_path / "nodrop"
    cli("pretrain", "--data", sample_data["shards"], "--output", out, "--max-steps", 2, *PRETRAIN_FAST,
        "--model.dropout", "0", "--save-every", 2)
    assert json.loads((out / "run_info.json").read_text())["config"]["model"]["dropout"] == 0
    for folder in (out / "model", out / "checkpoints" / "step-00000002" / "hf"):
        config = BertConfig.from_pretrained(folder)
        assert config.hidden_dropout_prob == config.attention_probs_dropout_prob == 0.1
    assert "| dropout | 0 pretraining, 0.1 in the exported config |" in (out / "model" / "README.md").read_text()


def test_custom_dimensions_beside_the_presets(sample_data, tmp_path):
    from transformers import BertConfig, BertForPreTraining

    dims = ["--model.hidden", "64", "--model.layers", "3", "--model.heads", "4", "--model.intermediate", "96"]
    plan = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", *PRETRAIN_FAST, *dims, "--dry-run")
    assert "model.size tiny, hidden 64, layers 3, heads 4, intermediate 96" in plan.stdout
    cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "o", "--max-steps", 1, *PRETRAIN_FAST, *dims)
    config = BertConfig.from_pretrained(tmp_path / "o" / "model")
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads, config.intermediate_size) == (64, 3, 4, 96)
    BertForPreTraining.from_pretrained(tmp_path / "o" / "model")
    bad = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "b", "--model.hidden", "100",
              "--model.heads", "3", check=False)
    assert bad.returncode == 2 and "model.hidden" in bad.stderr and "100 is not a multiple of 3" in bad.stderr


def test_a_checkpoint_from_before_a_setting_existed_resumes_with_its_default():
    import copy
    from pathlib import Path

    from pipeline.config import to_dict
    from pipeline.errors import PipelineError
    from pipeline.pretrain import Config, check_resume_settings

    now = to_dict(Config(data="d", output="o"))
    saved = copy.deepcopy(now)
    del saved["model"]["hidden"], saved["train"]["mask_share"]  # written by an older version
    check_resume_settings(saved, now, Path("ckpt"))
    now["train"]["mask_share"] = 1.0
    with pytest.raises(PipelineError, match="train.mask_share: 0.8 -> 1.0"):
        check_resume_settings(saved, now, Path("ckpt"))


def test_recipe_search_script_runs_variants_and_resumes(sample_data, tmp_path):
    import subprocess
    import sys

    from tests.conftest import ROOT, child_env

    cmd = [sys.executable, ROOT / "benchmarks" / "recipe.py", sample_data["shards"], tmp_path, "--steps", "4",
           "--eval-every", "2", "--variants", "bert,all-mask", "--", "--global-batch-size", "16", "--micro-batch-size", "8",
           "--eval.batches", "1", "--train.num_workers", "0"]
    first = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert first.returncode == 0, first.stderr[-3000:]
    assert first.stdout.startswith("| variant | escape step | MLM loss @2 | MLM loss @4 |")
    assert "| bert |" in first.stdout and "| all-mask |" in first.stdout and "Context-free baseline" in first.stdout
    results = json.loads((tmp_path / "recipe.json").read_text())
    assert set(results["all-mask"]["eval"]) == {"2", "4"}
    again = subprocess.run(cmd, capture_output=True, text=True, env=child_env(), timeout=600)
    assert again.stdout == first.stdout  # finished variants are read, not rerun



def test_unigram_bias_starts_the_output_at_the_training_frequencies(sample_data, tmp_path):
    """A fresh model's MLM output bias is the shards' log unigram (so its first evaluation is
    already near the unigram loss, not ~log(vocab)); the export is a stock BertForPreTraining."""
    import torch
    from transformers import BertForPreTraining

    ev, bias = {}, {}
    for name, flag in {"zero": "false", "unigram": "true"}.items():
        out = tmp_path / name
        cli("pretrain", "--data", sample_data["shards"], "--output", out, "--max-steps", 1, *PRETRAIN_FAST,
            "--lr", "1e-12", "--model.unigram_bias", flag)
        ev[name] = json.loads((out / "metrics.json").read_text())["eval"]
        bias[name] = BertForPreTraining.from_pretrained(out / "model").cls.predictions.bias.detach().double()
    assert "| MLM output bias at start | log unigram of the training shards |" in (tmp_path / "unigram/model/README.md").read_text()
    train = load_pretraining_dataset(sample_data["shards"], "train")
    counts = torch.from_numpy(train.token_counts(len(bias["zero"]), 10**9) + 0.5)
    assert torch.allclose(bias["unigram"], (counts / counts.sum()).log(), atol=1e-4)
    assert bias["zero"].abs().max() < 1e-6
    # the first evaluation scores what the (smoothed) unigram scores, where zeros score log(vocab)
    valid = load_pretraining_dataset(sample_data["shards"], "valid")
    collator = eval_collator(load_tokenizer(sample_data["shards"] / "tokenizer"), 128)
    base = baseline(train, [valid[i] for i in range(len(valid))], collator)
    assert ev["unigram"]["mlm_loss"] == pytest.approx(base["unigram_mlm_loss"], abs=0.3)
    assert ev["zero"]["mlm_loss"] == pytest.approx(np.log(len(counts)), abs=0.3)
    both = cli("pretrain", "--data", sample_data["shards"], "--output", tmp_path / "b", "--init-from", tmp_path / "zero",
               "--model.unigram_bias", "true", check=False)
    assert both.returncode == 2 and both.stderr.strip().count("\n") == 0 and "model.unigram_bias" in both.stderr


def test_cpu_recipe_script_writes_the_results_table(tmp_path):
    """benchmarks/cpu_recipe.sh --smoke on the embedded sample: the data stages, pretraining and
    the eight fine-tunes, then results.json in the issue's layout."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    from tests.conftest import ROOT, child_env

    sample = ROOT / "pipeline" / "sample"
    cmd = ["bash", ROOT / "benchmarks" / "cpu_recipe.sh", "--smoke", sample / "kowiki-sample-pages-articles-multistream.xml.bz2",
           sample / "reviews_train.tsv", sample / "reviews_eval.tsv", "out"]
    venv = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}  # as an activated venv has it
    proc = subprocess.run(cmd, capture_output=True, text=True, env=child_env(**venv), timeout=900, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert set(results) == {"escape_step", "pretrain_seconds", "nsmc"} and results["pretrain_seconds"] > 0
    for n in ("50000", "2000"):
        for init in ("pretrained", "random"):
            accs = results["nsmc"][n][init]
            assert len(accs) == 2 and all(0.0 <= a <= 1.0 for a in accs)
    usage = subprocess.run(["bash", ROOT / "benchmarks" / "cpu_recipe.sh", "only-one"], capture_output=True, text=True)
    assert usage.returncode == 2 and usage.stderr.startswith("usage:")


def test_probe_learning_rate_follows_the_model_width(sample_data):
    """The probe's default LR: 3e-4 for tiny/mini widths (5e-5 moves them little in 2 epochs),
    BERT's 5e-5 for wider models; a given LR is kept."""
    from pipeline import pretrain
    from pipeline.config import load_config
    from pipeline.sample.build import REVIEWS_EVAL, REVIEWS_TRAIN

    tok = load_tokenizer(sample_data["shards"] / "tokenizer")

    def probe_lr(hidden, **extra):
        cfg = load_config(pretrain.Config, None, {"data": "d", "output": "o", "eval.finetune": f"nsmc:{REVIEWS_TRAIN}:{REVIEWS_EVAL}",
                                                  **extra})
        return pretrain.make_probe(cfg, tok, hidden).cfg.lr

    assert probe_lr(128) == probe_lr(256) == 3e-4
    assert probe_lr(768) == 5e-5
    assert probe_lr(128, **{"eval.finetune_lr": 1e-3}) == 1e-3
