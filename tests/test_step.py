"""The pretraining step as a GPU needs it: no host sync between log steps, static shapes that
compile without graph breaks, fp16 overflow skipped by the scaler, non-finite steps skipped on
the device. On CPU, with the real model, optimizer and Accelerate objects."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo
from accelerate import Accelerator
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import BertForPreTraining

from pipeline.data import MLMNSPCollator, load_pretraining_dataset, load_tokenizer
from pipeline.model import PreTrainingModel, bert_config
from pipeline.optim import build_optimizer
from pipeline.step import MODEL_INPUTS, Meter, host_counts, train_step

# What makes a GPU wait for the host, seen where it happens: at the dispatcher, below every
# Python method and inside C++ ops (``_foreach_lerp_`` with a tensor weight calls ``.item()``
# in C++; ``torch.tensor(x, device=cuda)`` is a blocking host-to-device copy).
SYNC_OPS = {"aten._local_scalar_dense.default": "reads a value back (.item(), bool(), float(), C++ scalar)",
            "aten.lift_fresh.default": "a tensor built from host data (torch.tensor(...))",
            "aten.lift_fresh_copy.default": "a tensor built from host data",
            "aten.nonzero.default": "a data-dependent shape", "aten.masked_select.default": "a data-dependent shape",
            "aten.equal.default": "compares on the host", "aten.is_nonzero.default": "reads a value back"}


class HostSyncs(TorchDispatchMode):
    """Record every op that syncs with the host, as the dispatcher sees it."""

    def __init__(self):
        super().__init__()
        self.seen = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if str(func) in SYNC_OPS:
            self.seen.append(f"{func}: {SYNC_OPS[str(func)]}")
        return func(*args, **(kwargs or {}))


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


def graph_recorder(seen: list):
    """A torch.compile backend that runs AOT autograd and records the sync ops in the forward
    and backward ATen graphs (a dispatch mode does not see inside compiled code: dynamo runs
    a function eagerly while one is active)."""
    from torch._dynamo.backends.common import aot_autograd

    def record(gm, _inputs):
        seen.extend(f"{n.target}: {SYNC_OPS[str(n.target)]}" for n in gm.graph.nodes if str(n.target) in SYNC_OPS)
        gm.graph_count = getattr(gm, "graph_count", 0) + 1
        seen.append("graph")
        return gm.forward

    return aot_autograd(fw_compiler=record, bw_compiler=record)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("optimizer", ["adamw", "lamb"])
def test_no_host_sync_between_log_steps(sample_data, optimizer, compiled):
    tok, data = batches(sample_data, 4, buckets=(128,) if compiled else (32, 64, 128))
    accelerator, model, opt = setup(tok, optimizer)
    in_graphs = []
    forward = torch.compile(model, dynamic=False, backend=graph_recorder(in_graphs)) if compiled else model
    meter = Meter(accelerator.device)
    params = list(model.parameters())
    train_step(accelerator, model, forward, opt, [data[0]], meter, params, 1.0, 8)  # compiles; creates the state
    torch._dynamo.reset()
    assert in_graphs.count("graph") == (2 if compiled else 0)  # one forward and one backward graph
    assert [s for s in in_graphs if s != "graph"] == [], f"host syncs in the compiled graphs: {in_graphs}"
    with HostSyncs() as mode:  # the eager rest: accumulation, clipping, optimizer, tallies
        for b in data[1:]:
            train_step(accelerator, model, model, opt, [b], meter, params, 1.0, 8)
    assert mode.seen == [], f"host syncs inside the step: {sorted(set(mode.seen))}"
    totals = meter.flush(accelerator, False)
    assert totals["mlm_count"] == sum(host_counts([b])[0] for b in data) and totals["skipped"] == 0


def test_the_sync_recorder_sees_what_python_spies_miss():
    """The recorder itself: a C++-side .item() and a host-built tensor are both caught."""
    with HostSyncs() as mode:
        torch._foreach_lerp_([torch.zeros(3)], [torch.ones(3)], torch.tensor(0.5))
    assert any("_local_scalar_dense" in s for s in mode.seen) and any("lift_fresh" in s for s in mode.seen)


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
    train_step(accelerator, model, model, opt, [data[0]], meter, params, 1.0, 8)
    assert all(torch.equal(a, b) for a, b in zip(before, params)), "a non-finite step changed the weights"
    poison.remove()
    train_step(accelerator, model, model, opt, [data[1]], meter, params, 1.0, 8)
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
        train_step(accelerator, model, model, opt, [b], meter, params, 1.0, 8)
    # (Accelerate's step_was_skipped says False here: a fused optimizer is stepped with found_inf)
    assert all(torch.equal(a, b) for a, b in zip(before, params))
    assert accelerator.scaler.get_scale() == 2.0**14  # halved at each overflow
    poison.remove()
    train_step(accelerator, model, model, opt, [data[2]], meter, params, 1.0, 8)
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
            train_step(accelerator, model, forward, opt, [b], meter, params, 1.0, 8)
            t = meter.flush(accelerator, False)
            losses[mode].append(t["mlm_sum"] / t["mlm_count"] + t["nsp_sum"] / t["nsp_count"])
    torch._dynamo.reset()
    assert losses["compiled"] == pytest.approx(losses["eager"], rel=2e-4), losses
