"""The pretraining step as a GPU needs it: no host sync between log steps, static shapes that
compile without graph breaks, fp16 overflow skipped by the scaler, non-finite steps skipped on
the device. On CPU, with the real model, optimizer and Accelerate objects."""

from __future__ import annotations

import contextlib

import pytest
import torch
from accelerate import Accelerator
from transformers import BertForPreTraining

from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer
from pipeline.model import PreTrainingModel, bert_config
from pipeline.optim import build_optimizer
from pipeline.step import MODEL_INPUTS, Meter, host_counts, train_step

SYNCS = ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "nonzero", "numpy", "any", "all")


@contextlib.contextmanager
def host_reads():
    """Record every call that reads a tensor's value back to the host (a device sync on a GPU)."""
    seen = []
    saved = {name: getattr(torch.Tensor, name) for name in SYNCS}

    def spy(name, original):
        def wrapper(self, *args, **kwargs):
            seen.append(name)
            return original(self, *args, **kwargs)
        return wrapper

    for name, original in saved.items():
        setattr(torch.Tensor, name, spy(name, original))
    try:
        yield seen
    finally:
        for name, original in saved.items():
            setattr(torch.Tensor, name, original)


def batches(sample_data, n: int, size: int = 8, buckets=(32, 64, 128)):
    tok = load_tokenizer(sample_data["shards"] / "tokenizer")
    ds = load_pretraining_dataset(sample_data["shards"])
    collator = MLMNSPCollator(tok, seed=0, max_seq_len=128, buckets=buckets)
    return tok, [collator([ds[i] for i in range(k * size, (k + 1) * size)]) for k in range(n)]


def setup(tok, optimizer="adamw", seed=0):
    torch.manual_seed(seed)
    model = PreTrainingModel(BertForPreTraining(bert_config("tiny", len(tok), dropout=0.0)))
    opt = build_optimizer(model, optimizer, 1e-3, 0.01, (0.9, 0.98), 1e-6)
    accelerator = Accelerator(cpu=True)
    model, opt = accelerator.prepare(model, opt)
    return accelerator, model, opt


@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_no_host_sync_between_log_steps(sample_data, optimizer):
    tok, data = batches(sample_data, 4)
    accelerator, model, opt = setup(tok, optimizer)
    meter = Meter(accelerator.device)
    params = list(model.parameters())
    counts = [host_counts([b]) for b in data]  # the host-side batches: read before the step
    with host_reads() as seen:
        for b, (masked, _, _) in zip(data, counts):
            train_step(accelerator, model, model, opt, [b], masked, meter, params, 1.0, 8)
    assert seen == [], f"host reads inside the step: {sorted(set(seen))}"
    totals = meter.flush(accelerator, False)
    assert totals["mlm_count"] == sum(c[0] for c in counts) and totals["skipped"] == 0


def test_static_shapes_and_masked_slots(sample_data):
    _, data = batches(sample_data, 6)
    assert {b["input_ids"].shape[1] for b in data} <= {32, 64, 128}
    assert {tuple(b["mlm_positions"].shape) for b in data} == {(8, 24)}  # ceil8(round(128 * 0.15))
    for b in data:
        picked = b["labels"].gather(1, b["mlm_positions"])
        real = b["mlm_labels"] != -100
        assert torch.equal(picked[real], b["mlm_labels"][real]) and int(real.sum()) == int((b["labels"] != -100).sum())


def test_non_finite_step_is_skipped_on_the_device_and_counted(sample_data):
    tok, data = batches(sample_data, 3)
    accelerator, model, opt = setup(tok)
    meter, params = Meter(accelerator.device), list(model.parameters())
    poison = params[0].register_hook(lambda g: g * float("inf"))
    before = [p.detach().clone() for p in params]
    train_step(accelerator, model, model, opt, [data[0]], host_counts([data[0]])[0], meter, params, 1.0, 8)
    assert all(torch.equal(a, b) for a, b in zip(before, params)), "a non-finite step changed the weights"
    poison.remove()
    train_step(accelerator, model, model, opt, [data[1]], host_counts([data[1]])[0], meter, params, 1.0, 8)
    assert not torch.equal(before[1], params[1].detach())
    totals = meter.flush(accelerator, False)
    assert totals["skipped"] == 1 and totals["worst_run"] == 1


def test_fp16_overflow_is_skipped_by_the_scaler_and_never_crashes(sample_data):
    # The scaler's unscale_() may run once per update(): a loop that skipped optimizer.step()
    # on overflow never called update() and crashed at the next step.
    tok, data = batches(sample_data, 4)
    torch.manual_seed(0)
    model = PreTrainingModel(BertForPreTraining(bert_config("tiny", len(tok), dropout=0.0)))
    opt = build_optimizer(model, "adamw", 1e-3, 0.01, (0.9, 0.98), 1e-6)
    accelerator = Accelerator(cpu=True)
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    accelerator.native_amp = True
    model, opt = accelerator.prepare(model, opt)
    meter, params = Meter(accelerator.device), list(model.parameters())
    poison = params[0].register_hook(lambda g: g * float("inf"))
    before = [p.detach().clone() for p in params]
    for b in data[:2]:  # two overflows in a row, as in fp16's first steps
        train_step(accelerator, model, model, opt, [b], host_counts([b])[0], meter, params, 1.0, 8)
    # (Accelerate's step_was_skipped says False here: a fused optimizer is stepped with found_inf)
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert accelerator.scaler.get_scale() == 2.0**14  # halved at each overflow
    poison.remove()
    train_step(accelerator, model, model, opt, [data[2]], host_counts([data[2]])[0], meter, params, 1.0, 8)
    assert not torch.equal(before[1], params[1].detach())
    assert meter.flush(accelerator, False)["skipped"] == 2


def test_compiled_step_has_no_graph_breaks_and_matches_eager(sample_data):
    import torch._dynamo

    tok, data = batches(sample_data, 3, buckets=(128,))
    accelerator, model, opt = setup(tok)
    inputs = {k: data[0][k] for k in MODEL_INPUTS}
    explained = torch._dynamo.explain(model)(**inputs)
    assert explained.graph_break_count == 0, explained.break_reasons
    losses = {}
    for mode in ("eager", "compiled"):
        accelerator, model, opt = setup(tok)
        forward = torch.compile(model) if mode == "compiled" else model
        meter, params = Meter(accelerator.device), list(model.parameters())
        losses[mode] = []
        for b in data:
            train_step(accelerator, model, forward, opt, [b], host_counts([b])[0], meter, params, 1.0, 8)
            t = meter.flush(accelerator, False)
            losses[mode].append(t["mlm_sum"] / t["mlm_count"] + t["nsp_sum"] / t["nsp_count"])
    torch._dynamo.reset()
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=2e-4), losses
