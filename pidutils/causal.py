"""The engine for decoder-only models (chapter 7): a Llama-style causal LM's pass, written with its
own weights so that each method chooses one thing, its attention.

A decoder-only model reads the document and the question as one sequence. Chapter 7 decodes U
questions of one document three ways, and they differ only in where each layer's new keys and
values go and what a query attends to; so :func:`causal_states` takes that as an argument, an
``Attention`` ``(layer, q, k, v) -> output``, as :func:`pidutils.t5.decoder_states` takes its
self-attention bias. The rest is shared here:

- :func:`attend`: softmax attention with grouped-query heads that also returns each query's
  log-sum-exp, and :func:`merge_attention`, which combines two parts over disjoint keys exactly
  (Hydragen's and FlashInfer's merge);
- :func:`kv_cache`: the rolling KV cache of :class:`pidutils.t5.KVCache`, shaped for this model;
- :func:`greedy_loop`: greedy decoding after a first chunk of tokens, each row at its own positions.

Tensors are made on the model's device. Checked against Hugging Face's own forward and
``generate`` in ``tests/test_shared_prefix.py``.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from transformers import PreTrainedModel
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from .checks import check_int
from .t5 import KVCache, additive_mask, heads, merge

# One layer's attention for the new tokens: (layer, q (rows, h, n, d), k and v (rows, kv_heads, n, d),
# rotary positions applied) -> the attended values (rows, h, n, d). The method's one choice.
Attention = Callable[[int, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]

CAUSAL_TYPES = ("llama", "mistral", "qwen2")  # Llama-style blocks: RMSNorm, RoPE, grouped-query attention, SwiGLU


def check_causal(model) -> None:
    """The decoder-only engine needs a Llama-style causal LM; anything else is a ``ValueError``."""
    config = getattr(model, "config", None)
    if getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", "") not in CAUSAL_TYPES:
        raise ValueError(f"model must be a Llama-style causal LM (model_type one of {', '.join(CAUSAL_TYPES)}), "
                         f"got {type(model).__name__}")


def head_dim(model: PreTrainedModel) -> int:
    config = model.config
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def kv_cache(model: PreTrainedModel, rows: int, capacity: int) -> KVCache:
    """An empty KV cache for ``rows`` sequences of up to ``capacity`` tokens (it grows past that)."""
    check_int("rows", rows, 1)
    check_int("capacity", capacity, 1)
    config = model.config
    return KVCache(torch.zeros((2, config.num_hidden_layers, rows, config.num_key_value_heads, capacity,
                                head_dim(model)), dtype=model.dtype, device=model.device))


def attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Softmax attention of ``q`` (rows, h, n, d) over ``k``, ``v`` (rows, kv_heads, m, d) under the
    additive ``bias`` (rows or 1, 1, n, m): the output (rows, h, n, d) and each query's log-sum-exp of
    its scores (rows, h, n, 1). The h / kv_heads query heads that share a key head are folded into
    the query axis, so each key head is read once for all of them (grouped-query attention)."""
    rows, h, n, d = q.shape
    groups = h // k.shape[1]
    scores = (q.reshape(rows, k.shape[1], groups * n, d) @ k.transpose(-1, -2)) * d ** -0.5
    scores = scores.view(rows, k.shape[1], groups, n, -1) + bias[:, :, None]
    top = scores.amax(-1, keepdim=True)
    # One exponential a score, the costly part on a CPU. Below -80 (a masked key's -3.4e38) exp is
    # subnormal or 0, and 20-50x slower there; e^-80 = 2e-35 is as good as 0 beside the top's e^0 = 1.
    weights = (scores - top).clamp_min_(-80.0).exp_()
    total = weights.sum(-1, keepdim=True)
    out = (weights.flatten(2, 3) @ v).view(rows, h, n, d) / total.view(rows, h, n, 1)
    return out, (top + total.log()).view(rows, h, n, 1)


def merge_attention(out_a: torch.Tensor, lse_a: torch.Tensor, out_b: torch.Tensor,
                    lse_b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Attention over keys A and keys B from the two parts (chapter 7): part A's share of the softmax
    mass is exp(lse_a) / (exp(lse_a) + exp(lse_b)) = sigmoid(lse_a - lse_b), so the output is
    out_b + share * (out_a - out_b), and the log-sum-exp over both is log(exp(lse_a) + exp(lse_b)).
    Exact: it equals one softmax over A and B together, and no exponential can overflow."""
    share = torch.sigmoid(lse_a - lse_b)
    return torch.lerp(out_b, out_a, share), torch.logaddexp(lse_a, lse_b)


def allowed_bias(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" (rows, n, m) as :func:`attend`'s additive bias (rows, 1, n, m)."""
    return additive_mask(allowed[:, None], dtype)


def causal_allowed(valid: torch.Tensor, new: int) -> torch.Tensor:
    """Which of ``valid``'s keys (rows, past + new; False on padding) the last ``new`` tokens may see:
    the real ones up to their own place. (rows, new, past + new)."""
    keys = torch.arange(valid.shape[1], device=valid.device)
    queries = keys[valid.shape[1] - new:]
    return (keys[None, :] <= queries[:, None])[None] & valid[:, None, :]


def causal_states(model: PreTrainedModel, ids: torch.Tensor, positions: torch.Tensor,
                  attention: Attention) -> torch.Tensor:
    """The model's pass over ``ids`` (rows, n) at ``positions`` (rows, n), each layer's attention
    done by ``attention``: the final hidden states (rows, n, hidden), after the final norm.

    Each block is Llama's: RMSNorm, the query, key and value projections, rotary positions on
    queries and keys, the attention, the output projection and a residual; RMSNorm, the SwiGLU MLP
    and a residual.
    """
    inner = model.model
    h = inner.embed_tokens(ids)
    cos, sin = inner.rotary_emb(h, positions)
    d = head_dim(model)
    for layer, block in enumerate(inner.layers):
        a = block.self_attn
        x = block.input_layernorm(h)
        q, k = apply_rotary_pos_emb(heads(a.q_proj(x), d), heads(a.k_proj(x), d), cos, sin)
        h = h + a.o_proj(merge(attention(layer, q, k, heads(a.v_proj(x), d))))
        h = h + block.mlp(block.post_attention_layernorm(h))
    return inner.norm(h)


def cached_attention(cache: KVCache, bias: torch.Tensor) -> Attention:
    """Attention over each row's own cache: the new keys and values are appended to ``cache``, and
    the queries attend to everything cached so far under ``bias`` (rows, 1, n, cache length + n)."""
    def attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        keys, values = cache.write(layer, k, v)
        return attend(q, keys, values, bias)[0]
    return attention


def cached_pass(model: PreTrainedModel, ids: torch.Tensor, positions: torch.Tensor, cache: KVCache,
                attention: Attention) -> torch.Tensor:
    """One pass that appends to ``cache``: the logits (rows, n, vocab); the cache's length advances by n."""
    states = causal_states(model, ids, positions, attention)
    cache.length += ids.shape[1]
    return model.lm_head(states)


# Builds a step's attention from the suffix cache and the step's "may attend" over it (rows, n, length).
StepAttention = Callable[[KVCache, torch.Tensor], Attention]


def greedy_loop(model: PreTrainedModel, ids: torch.Tensor, positions: torch.Tensor, valid: torch.Tensor, *,
                cache: KVCache, step_attention: StepAttention, max_new_tokens: int, pad: int) -> torch.Tensor:
    """Greedy decoding after a first chunk ``ids`` (rows, n), left-padded (``valid`` False there), at
    ``positions``: the chunk in one pass, then one token a step, each row one position further,
    until every row has made ``</s>`` or ``max_new_tokens``. The cache holds the rows' own tokens;
    ``step_attention`` says what else each query sees (chapter 7's three ways). Returns the new tokens
    (rows, steps), ``pad`` after each row's ``</s>``. One host synchronisation a step."""
    check_int("max_new_tokens", max_new_tokens, 1)
    eos = model.config.eos_token_id
    ended = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    seen = valid
    tokens = []
    for _ in range(max_new_tokens):
        attention = step_attention(cache, causal_allowed(seen, ids.shape[1]))
        token = cached_pass(model, ids, positions, cache, attention)[:, -1].argmax(-1).masked_fill(ended, pad)
        tokens.append(token)
        ended |= token == eos
        if bool(ended.all()):
            break
        ids, positions = token[:, None], positions[:, -1:] + 1
        seen = torch.cat([seen, torch.ones_like(seen[:, :1])], 1)
    return torch.stack(tokens, 1)
