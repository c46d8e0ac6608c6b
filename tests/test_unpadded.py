"""The padding-free step computes what the padded one does: same losses, hit counts and
gradients on mixed-length batches, with the stock BertForPreTraining weights."""

import numpy as np
import pytest
import torch
from transformers import BertForPreTraining

from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer
from pipeline.model import PreTrainingModel, bert_config
from pipeline.step import model_inputs


def mixed_batch(sample_data, padding_free, rows=12):
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    ds = load_pretraining_dataset(sample_data["shards"])
    collate = MLMNSPCollator(tok, seed=3, max_seq_len=128, buckets=(32, 64, 128), padding_free=padding_free)
    by_len = sorted(range(len(ds)), key=lambda i: len(ds[i]["input_ids"]))
    pick = [by_len[int(q * (len(by_len) - 1))] for q in np.linspace(0, 1, rows)]  # shortest to longest
    return tok, collate([ds[i] for i in pick])


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padding_free_equals_padded_forward_and_backward(sample_data, attention):
    tok, padded = mixed_batch(sample_data, False)
    _, stream = mixed_batch(sample_data, True)
    lengths = padded["attention_mask"].sum(1)
    assert lengths.min() < lengths.max() / 2 and stream["input_ids"].numel() == int(lengths.sum())
    assert torch.equal(stream["mlm_labels"], padded["mlm_labels"].flatten())
    torch.manual_seed(0)
    model = PreTrainingModel(BertForPreTraining(bert_config("tiny", len(tok), dropout=0.0, attention=attention)))
    results = {}
    for name, batch in (("padded", padded), ("stream", stream)):
        model.zero_grad()
        out = model(**{k: batch[k] for k in model_inputs(batch)})
        out["loss"].backward()
        results[name] = (out, {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    (a, ga), (b, gb) = results["padded"], results["stream"]
    for k in ("loss", "mlm_sum", "nsp_sum"):
        torch.testing.assert_close(b[k], a[k], rtol=1e-5, atol=1e-5)
    for k in ("mlm_correct", "nsp_correct", "mlm_count", "nsp_count"):
        assert int(a[k]) == int(b[k]), k
    assert ga.keys() == gb.keys()
    for n in ga:
        torch.testing.assert_close(gb[n], ga[n], rtol=1e-4, atol=1e-6, msg=n)


def test_stream_layout(sample_data):
    _, padded = mixed_batch(sample_data, False, rows=5)
    _, stream = mixed_batch(sample_data, True, rows=5)
    cu = stream["cu_seqlens"].long()
    assert cu[0] == 0 and torch.equal(cu[1:] - cu[:-1], padded["attention_mask"].sum(1))
    for r in range(5):  # each row's tokens, in order, at cu[r]:cu[r+1]
        n = int(cu[r + 1] - cu[r])
        assert torch.equal(stream["input_ids"][cu[r]:cu[r + 1]], padded["input_ids"][r, :n])
        assert torch.equal(stream["position_ids"][cu[r]:cu[r + 1]], torch.arange(n))
    slots = padded["mlm_positions"].shape[1]
    for r in range(5):  # each prediction slot points at the same token in the stream as in its row
        for j in range(slots):
            if padded["mlm_labels"][r, j] != -100:
                at = stream["mlm_positions"][r * slots + j]
                assert stream["input_ids"][at] == padded["input_ids"][r, padded["mlm_positions"][r, j]]
                assert cu[r] <= at < cu[r + 1]
