"""BERT size presets, the pretraining loss with a masked-only MLM head, and FLOP counts."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
import transformers
from torch import nn
from transformers import BertConfig, BertForPreTraining

from pipeline.errors import PipelineError
from pipeline.presets import PRESETS
from pipeline.unpadded import encode


def bert_config(size: str, vocab_size: int, max_position: int = 512, dropout: float = 0.1,
                attention: str = "sdpa", pad_token_id: int = 0, dims: dict | None = None) -> BertConfig:
    """A size preset, with any of its dimensions replaced by ``dims`` (hidden, layers, heads,
    intermediate; 0 keeps the preset's)."""
    hidden, layers, heads = PRESETS[size]
    dims = {k: v for k, v in (dims or {}).items() if v}
    hidden, layers, heads = dims.get("hidden", hidden), dims.get("layers", layers), dims.get("heads", heads)
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=dims.get("intermediate", 4 * hidden),
                        max_position_embeddings=max_position, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=pad_token_id,
                        architectures=["BertForPreTraining"])
    config._attn_implementation = attention
    return config


class PreTrainingModel(nn.Module):
    """``BertForPreTraining`` whose MLM head runs on the masked positions only.

    The vocabulary projection over every position is the largest single matmul of a small
    BERT; gathering the masked positions first (a fixed number of slots per sequence, so the
    shape is static) gives the same loss for a fraction of it.
    The wrapped ``bert`` is a stock ``BertForPreTraining``: that is what gets exported.
    """

    def __init__(self, bert: BertForPreTraining):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, token_type_ids, attention_mask, next_sentence_label, mlm_positions, mlm_labels,
                mlm_denominator=None, nsp_denominator=None, labels=None, position_ids=None, cu_seqlens=None,
                token_index=None) -> dict[str, torch.Tensor]:
        """Summed losses and hit counts; ``loss`` divides the sums by the given denominators.

        Dividing by the global token count (rather than each micro-batch's own mean) makes
        gradient accumulation over k micro-batches equal to one k-times larger batch. Every
        shape is static and nothing is read back to the host: no step waits on the device.
        ``labels`` (B, S) is accepted and unused: ``mlm_positions``/``mlm_labels`` carry it.
        With ``cu_seqlens`` the batch is a padding-free stream (``pipeline.unpadded``).
        """
        if cu_seqlens is not None:
            seq, pooled = encode(self.bert.bert, input_ids, token_type_ids, position_ids, cu_seqlens, token_index,
                                 attention_mask)
            picked = seq.index_select(0, mlm_positions.flatten())
        else:
            seq, pooled = self.bert.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                                         attention_mask=self.extended_mask(attention_mask), return_dict=False)[:2]
            picked = seq.gather(1, mlm_positions.unsqueeze(-1).expand(-1, -1, seq.shape[-1])).flatten(0, 1)
        logits = self.bert.cls.predictions(picked).float()
        targets = mlm_labels.flatten()
        mlm_sum = F.cross_entropy(logits, targets, ignore_index=-100, reduction="sum")
        nsp_logits = self.bert.cls.seq_relationship(pooled).float()
        nsp_sum = F.cross_entropy(nsp_logits, next_sentence_label, reduction="sum")
        real = targets != -100
        mlm_count = real.sum()
        mlm_den = mlm_count.clamp(min=1) if mlm_denominator is None else mlm_denominator
        nsp_den = next_sentence_label.numel() if nsp_denominator is None else nsp_denominator
        return {"loss": mlm_sum / mlm_den + nsp_sum / nsp_den,
                "mlm_sum": mlm_sum.detach(), "nsp_sum": nsp_sum.detach(),
                "mlm_correct": ((logits.argmax(-1) == targets) & real).sum(),
                "nsp_correct": (nsp_logits.argmax(-1) == next_sentence_label).sum(),
                "mlm_count": mlm_count, "nsp_count": torch.full((), next_sentence_label.numel(), device=pooled.device)}

    def extended_mask(self, attention_mask: torch.Tensor) -> torch.Tensor:
        """The padding mask as the 4D mask attention uses. Given ready-made, transformers 5
        skips its own ``mask.all()`` check, a host sync per forward (4.x takes the 2D mask)."""
        if not _TAKES_4D_MASK:
            return attention_mask
        keep = attention_mask[:, None, None, :].bool()
        if self.bert.config._attn_implementation == "sdpa":
            return keep
        return (~keep).float() * torch.finfo(torch.float32).min


_TAKES_4D_MASK = int(transformers.__version__.split(".")[0]) >= 5


def build_model(config: BertConfig) -> PreTrainingModel:
    return PreTrainingModel(BertForPreTraining(config))


def resolve_source(source: str) -> str:
    """``--init-from``: a pretrain output (its ``model/``), a checkpoint (its ``hf/``), a
    Hugging Face model directory, or else a Hub id."""
    path = Path(source)
    for candidate in (path / "model", path / "hf", path):
        if (candidate / "config.json").exists():
            return str(candidate)
    if path.exists():
        raise PipelineError(f"--init-from {source}: no config.json there, in model/ or in hf/; pass a pretrain output, "
                            "a checkpoint step-N directory or a Hugging Face model directory")
    return source


def from_pretrained(source: str, tokenizer, max_seq_len: int, dropout: float, attention: str) -> tuple[BertForPreTraining, list[str]]:
    """A BERT to continue pretraining from, checked against the shards' tokenizer and length;
    returns it and the weights it had to initialize (an NSP head, when the source has none)."""
    from transformers import AutoConfig, AutoTokenizer

    where = resolve_source(source)
    try:
        config = AutoConfig.from_pretrained(where)
    except (OSError, ValueError) as err:
        raise PipelineError(f"--init-from {source}: {(str(err).splitlines() or [type(err).__name__])[0]}; pass a local "
                            "directory, or a Hub id that is in the cache or reachable (HF_HUB_OFFLINE unset)") from None
    if config.model_type != "bert":
        raise PipelineError(f"--init-from {source} is a {config.model_type} model; pass a BERT")
    try:
        theirs = AutoTokenizer.from_pretrained(where).get_vocab()
    except (OSError, ValueError, TypeError):
        theirs = None  # weights only: the vocabulary size is all there is to compare
    ours = tokenizer.get_vocab()
    if (theirs is not None and theirs != ours) or config.vocab_size != len(ours):
        diff = theirs and next((t for t, i in sorted(ours.items(), key=lambda kv: kv[1]) if theirs.get(t) != i), None)
        raise PipelineError(f"--init-from {source}: its vocabulary ({config.vocab_size} pieces) is not the shards' "
                            f"({len(ours)} pieces" + (f", first difference {diff!r}" if diff else "")
                            + f"); shard the corpus with its tokenizer: kowiki-bert shard --tokenizer {where} ...")
    if config.max_position_embeddings < max_seq_len:
        raise PipelineError(f"--init-from {source} has {config.max_position_embeddings} positions, fewer than the shards' "
                            f"max_seq_len {max_seq_len}; shard with --max-seq-len {config.max_position_embeddings} or less")
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = dropout
    config.architectures = ["BertForPreTraining"]
    bert, info = BertForPreTraining.from_pretrained(where, config=config, attn_implementation=attention,
                                                    output_loading_info=True)
    return bert, [k for k in info["missing_keys"] if not k.endswith(("position_ids", "decoder.bias", "decoder.weight"))]


def count_params(config: BertConfig) -> tuple[int, int]:
    """(non-embedding parameters, embedding parameters) of a BERT encoder."""
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    per_layer = 4 * h * h + 4 * h + 2 * h * config.intermediate_size + config.intermediate_size + h + 4 * h
    embeddings = (v + config.max_position_embeddings + config.type_vocab_size) * h
    return layers * per_layer + h * h + h, embeddings


def train_flops(config: BertConfig, tokens: int, seq_len: int, masked: int, full_head: bool = False) -> float:
    """Model FLOPs of one training step (forward + backward = 3x forward), as in MFU papers."""
    dense, _ = count_params(config)
    h, layers, v = config.hidden_size, config.num_hidden_layers, config.vocab_size
    forward = 2 * dense * tokens + 2 * 2 * layers * h * seq_len * tokens  # matmuls + attention
    head_positions = tokens if full_head else masked
    forward += 2 * (h * h + h * v) * head_positions
    return 3.0 * forward


# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device name, for MFU; the first key found in
# the name wins, so the H100's PCIe (756) and the H100/H200 NVL (835) parts come before SXM's 989.
PEAK_FLOPS = [("H100 PCIe", 756e12), ("H100 NVL", 835e12), ("H200 NVL", 835e12), ("H200", 989e12), ("H100", 989e12), ("GH200", 989e12),
              ("A100", 312e12), ("A10G", 125e12), ("L40S", 362e12), ("L4", 121e12), ("V100", 125e12),
              ("A6000", 155e12), ("4090", 165e12)]


def device_peak_flops(device: torch.device) -> float | None:
    """The device's dense 16-bit peak, or None (CPU, unknown GPU): then report FLOP/s only."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS if key in name), None)
