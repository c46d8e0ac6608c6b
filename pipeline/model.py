"""BERT size presets, the pretraining loss with a masked-only MLM head, and FLOP counts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForPreTraining

# (hidden, layers, heads): the BERT paper's base/large and Turc et al.'s smaller models.
PRESETS = {
    "tiny": (128, 2, 2),
    "mini": (256, 4, 4),
    "small": (512, 4, 8),
    "base": (768, 12, 12),
    "large": (1024, 24, 16),
}


def bert_config(size: str, vocab_size: int, max_position: int = 512, dropout: float = 0.1,
                attention: str = "sdpa", pad_token_id: int = 0) -> BertConfig:
    hidden, layers, heads = PRESETS[size]
    config = BertConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                        num_attention_heads=heads, intermediate_size=4 * hidden,
                        max_position_embeddings=max_position, hidden_dropout_prob=dropout,
                        attention_probs_dropout_prob=dropout, pad_token_id=pad_token_id,
                        architectures=["BertForPreTraining"])
    config._attn_implementation = attention
    return config


class PreTrainingModel(nn.Module):
    """``BertForPreTraining`` whose MLM head runs on the masked positions only.

    The vocabulary projection over every position is the largest single matmul of a small
    BERT; gathering the ~15% masked positions first gives the same loss for a fraction of it.
    The wrapped ``bert`` is a stock ``BertForPreTraining``: that is what gets exported.
    """

    def __init__(self, bert: BertForPreTraining):
        super().__init__()
        self.bert = bert

    def forward(self, input_ids, token_type_ids, attention_mask, labels, next_sentence_label,
                mlm_denominator: float = 0.0, nsp_denominator: float = 0.0) -> dict[str, torch.Tensor]:
        """Summed losses and hit counts; ``loss`` divides the sums by the given denominators.

        Dividing by the global token count (rather than each micro-batch's own mean) makes
        gradient accumulation over k micro-batches equal to one k-times larger batch.
        """
        seq, pooled = self.bert.bert(input_ids=input_ids, token_type_ids=token_type_ids,
                                     attention_mask=attention_mask, return_dict=False)[:2]
        selected = labels != -100
        targets = labels[selected]
        logits = self.bert.cls.predictions(seq[selected]).float()
        mlm_sum = F.cross_entropy(logits, targets, reduction="sum")
        nsp_logits = self.bert.cls.seq_relationship(pooled).float()
        nsp_sum = F.cross_entropy(nsp_logits, next_sentence_label, reduction="sum")
        mlm_den = mlm_denominator or max(targets.numel(), 1)
        nsp_den = nsp_denominator or max(next_sentence_label.numel(), 1)
        return {"loss": mlm_sum / mlm_den + nsp_sum / nsp_den,
                "mlm_sum": mlm_sum.detach(), "nsp_sum": nsp_sum.detach(),
                "mlm_correct": (logits.argmax(-1) == targets).sum(),
                "nsp_correct": (nsp_logits.argmax(-1) == next_sentence_label).sum(),
                "mlm_count": torch.tensor(targets.numel()), "nsp_count": torch.tensor(next_sentence_label.numel())}


def build_model(config: BertConfig) -> PreTrainingModel:
    return PreTrainingModel(BertForPreTraining(config))


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


# Dense bf16/fp16 tensor-core peaks (FLOP/s) by device name, for MFU.
PEAK_FLOPS = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "A10G": 125e12, "L4": 121e12,
              "L40S": 362e12, "V100": 125e12, "A6000": 155e12, "4090": 165e12}


def device_peak_flops(device: torch.device) -> float | None:
    """The device's dense 16-bit peak, or None (CPU, unknown GPU): then report FLOP/s only."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_FLOPS.items() if key in name), None)
