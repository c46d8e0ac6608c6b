"""Padding-free BERT encoder: every layer computes the real tokens of a batch only.

A padded batch spends the same FLOPs on a ``[PAD]`` as on a word in every projection, feed-
forward and LayerNorm. Here the batch is one stream of its real tokens (``cu_seqlens`` marks
where each sequence starts, as in FlashAttention's varlen API) and only attention needs to know
the sequences apart: on CUDA in 16-bit without attention dropout it is PyTorch's
``varlen_attn`` (FlashAttention over the stream); elsewhere an exact reference puts q/k/v back
into a padded (rows, length) grid for ``scaled_dot_product_attention`` and takes the real
positions out again. The weights are a stock ``BertModel``'s, used in the same order, so the
export is unchanged and a padded forward gives the same numbers.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The stream's fields, as MLMNSPCollator(padding_free=True) gives them (all on the device):
# input_ids, token_type_ids, position_ids (T,), cu_seqlens (rows + 1,) int32, token_index (T,)
# the flat position of each token in a (rows, length) grid, attention_mask (rows, length) for
# the reference attention, mlm_positions (rows * slots,) stream positions, mlm_labels likewise.
PACKED_INPUTS = ("input_ids", "token_type_ids", "position_ids", "cu_seqlens", "token_index", "attention_mask",
                 "next_sentence_label", "mlm_positions", "mlm_labels")


STREAM_LENGTH_FIELDS = ("input_ids", "token_type_ids", "position_ids", "token_index")


def mark_dynamic(batch: dict) -> dict:
    """Tell ``torch.compile`` that a stream's token count varies, before its first compile: one
    graph then serves every batch, instead of a static graph that recompiles at the second."""
    import torch._dynamo

    if "cu_seqlens" in batch:
        for k in STREAM_LENGTH_FIELDS:
            torch._dynamo.mark_dynamic(batch[k], 0)
    return batch


def _varlen_available() -> bool:
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.is_available()


VARLEN = _varlen_available()


def uses_varlen(x: torch.Tensor, attention_dropout: float) -> bool:
    """FlashAttention varlen: CUDA, 16-bit, and no dropout on the attention probabilities
    (``varlen_attn`` has none; with dropout the reference path keeps the recipe exact)."""
    return VARLEN and x.is_cuda and x.dtype in (torch.float16, torch.bfloat16) and attention_dropout == 0.0


def attention(q, k, v, cu_seqlens, token_index, attention_mask, dropout: float, scale: float) -> torch.Tensor:
    """Attention within each sequence of the stream; q, k, v and the result are (T, heads, d)."""
    if uses_varlen(q, dropout):
        from torch.nn.attention.varlen import varlen_attn

        return varlen_attn(q, k, v, cu_seqlens, cu_seqlens, attention_mask.shape[1], attention_mask.shape[1], scale=scale)
    rows, length = attention_mask.shape
    heads, d = q.shape[1], q.shape[2]

    def grid(t):  # (T, heads, d) -> (rows, heads, length, d), zeros at padding
        out = t.new_zeros(rows * length, heads, d).index_copy(0, token_index, t)
        return out.view(rows, length, heads, d).transpose(1, 2)

    keep = attention_mask[:, None, None, :].bool()
    ctx = F.scaled_dot_product_attention(grid(q), grid(k), grid(v), attn_mask=keep, dropout_p=dropout, scale=scale)
    return ctx.transpose(1, 2).reshape(rows * length, heads, d).index_select(0, token_index)


def encode(bert, input_ids, token_type_ids, position_ids, cu_seqlens, token_index, attention_mask):
    """(sequence output (T, hidden), pooled [CLS] output (rows, hidden)) of a ``BertModel``
    over the stream, with its own modules and weights."""
    emb = bert.embeddings
    x = emb.word_embeddings(input_ids) + emb.token_type_embeddings(token_type_ids)
    x = emb.dropout(emb.LayerNorm(x + emb.position_embeddings(position_ids)))
    for layer in bert.encoder.layer:
        sa, so = layer.attention.self, layer.attention.output
        heads, d = sa.num_attention_heads, sa.attention_head_size
        q, k, v = (proj(x).view(-1, heads, d) for proj in (sa.query, sa.key, sa.value))
        p = sa.dropout.p if sa.training else 0.0
        ctx = attention(q, k, v, cu_seqlens, token_index, attention_mask, p, d ** -0.5).reshape(x.shape)
        x = so.LayerNorm(so.dropout(so.dense(ctx)) + x)
        h = layer.intermediate.intermediate_act_fn(layer.intermediate.dense(x))
        x = layer.output.LayerNorm(layer.output.dropout(layer.output.dense(h)) + x)
    cls = x.index_select(0, cu_seqlens[:-1].long())
    return x, bert.pooler.activation(bert.pooler.dense(cls))
