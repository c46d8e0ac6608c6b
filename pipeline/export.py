"""Export a trained model as a Hugging Face directory, gathering ZeRO shards one tensor at a time.

Under DeepSpeed the fp32 master weights are partitioned over ranks (ZeRO-1/2: optimizer
states, ZeRO-3: the parameters too). ``safe_get_full_fp32_param`` assembles one parameter
at a time, so rank 0 never holds more than the model itself: no ``zero_to_fp32`` pass over
the checkpoint and no second copy in RAM.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from transformers import BertForPreTraining

from pipeline.distributed import is_deepspeed
from pipeline.tokenizer import write_tokenizer


def _full_param(p: torch.nn.Parameter) -> torch.Tensor:
    from deepspeed.utils import safe_get_full_fp32_param

    full = safe_get_full_fp32_param(p)
    if full is not None:
        return full
    if hasattr(p, "ds_id"):  # ZeRO-3 parameter without an fp32 master (no optimizer yet)
        import deepspeed

        with deepspeed.zero.GatheredParameters([p]):
            return p.data.float().clone()
    return p.data.float()


def full_state_dict(accelerator, bert: torch.nn.Module) -> dict[str, torch.Tensor] | None:
    """The fp32 weights of a (possibly ZeRO-partitioned) HF module on rank 0, None elsewhere.

    Every rank must call this: under DeepSpeed it is a collective.
    """
    if not is_deepspeed(accelerator):
        if not accelerator.is_main_process:
            return None
        return {k: v.detach().float().cpu().clone() for k, v in bert.state_dict().items()}
    state = {}
    for name, p in bert.named_parameters():
        full = _full_param(p)
        if accelerator.is_main_process:
            state[name] = full.detach().cpu().clone()
    persistent = set(bert.state_dict().keys())
    for name, b in bert.named_buffers():
        if accelerator.is_main_process and name in persistent:
            state[name] = b.detach().cpu().clone()
    return state if accelerator.is_main_process else None


def save_hf(state: dict[str, torch.Tensor], config, tokenizer, out: Path, model_cls=BertForPreTraining,
            card: str | None = None, files: dict[str, Path] | None = None) -> None:
    """Write a loadable HF directory (safetensors, config, tokenizer, the model card as
    ``README.md`` and ``files`` such as its plots), atomically."""
    out = Path(out)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    with torch.random.fork_rng(devices=[]):  # building it must not move the training RNG
        model = model_cls(config)
    missing, unexpected = model.load_state_dict(state, strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or [])
    missing = [k for k in missing if k not in tied and not k.endswith(("position_ids", "token_type_ids", "decoder.weight", "decoder.bias"))]
    if missing or unexpected:
        raise RuntimeError(f"export: state dict mismatch, missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.save_pretrained(str(tmp), safe_serialization=True)
    if getattr(tokenizer, "is_fast", False):
        write_tokenizer(tokenizer, tmp)
    else:  # a slow-only tokenizer of another model (fine-tuning): its own files
        tokenizer.save_pretrained(str(tmp))
    if card:
        (tmp / "README.md").write_text(card, encoding="utf-8")
    for name, src in (files or {}).items():
        shutil.copyfile(src, tmp / name)
    if out.exists():
        shutil.rmtree(out)
    tmp.rename(out)
