"""The engine's core: T5's encoder once, its cross-attention memory, a KV cache, and the decoder pass
with the greedy loop, written once for every decoding method of the book (chapters 3 to 5).

Each method differs from plain decoding in one place only, and that place is an argument here:

- PID (chapter 3) shares the cross-attention keys and values of one document among U prompts by
  folding the U prompts' queries into the query axis (:func:`fold`, :func:`cross_attention`);
- pipelined decoding (chapter 4) gives self-attention its own mask and relative positions, so the
  caller passes the self-attention bias (:func:`bias_table`, :func:`position_bias`);
- speculative decoding (chapter 5) rolls the self-attention cache back after a rejection, so the
  cache is preallocated and has a length that can be reset (:class:`KVCache`), as in gpt-fast;
- Medusa (chapter 6) checks a tree of candidates in one pass, under its own bias, reads the final
  hidden states (:func:`decoder_states`) for its heads, and keeps one branch of the tree in the
  cache (:meth:`KVCache.keep`).

:func:`document_memory` tokenizes, encodes once and projects to every layer's K/V;
:func:`decoder_forward` runs the embedding, every block (self-attention with the given bias and
cache, cross-attention shared or copied, feed-forward) and the LM head, with the model's own
weights; :func:`decode_loop` is the one greedy loop (PID's prompts, the sequential baseline, the
speculative draft's guesses). Tensors are made on the model's device. Checked against Hugging
Face's T5 in ``tests/test_t5.py``.
"""
from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.models.t5.modeling_t5 import T5Attention

from .batching import pad_rows, prompt_ids, tokenize_checked
from .checks import check_int, check_prompt_lists


def check_t5(model) -> None:
    """The book's decoders need a T5-style encoder-decoder; anything else is a ``ValueError``."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", "") != "t5":
        raise ValueError(f"model must be a T5 encoder-decoder (T5ForConditionalGeneration), "
                         f"got {type(model).__name__}")


def heads(x: torch.Tensor, d_kv: int) -> torch.Tensor:
    """(rows, n, h*d) -> (rows, h, n, d)."""
    return x.view(x.shape[0], x.shape[1], -1, d_kv).transpose(1, 2)


def merge(x: torch.Tensor) -> torch.Tensor:
    """(rows, h, n, d) -> (rows, n, h*d)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def additive_mask(allowed: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask as an additive bias: 0 where allowed, the dtype's minimum elsewhere."""
    return torch.zeros(allowed.shape, dtype=dtype, device=allowed.device).masked_fill(~allowed, torch.finfo(dtype).min)


# --- The encoder, once, and the cross-attention memory --------------------------------------------

def encode(model: T5ForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run the encoder once per document: (b, n_s, d)."""
    return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


@dataclass
class CrossMemory:
    """Per decoder layer, the cross-attention keys and values of the documents, and their mask.

    ``keys[l]`` and ``values[l]`` have shape ``(b, h, n_s, d_kv)`` when shared, ``(b*U, h, n_s, d_kv)``
    when copied; ``bias`` is the additive key-padding mask, ``(rows, 1, 1, n_s)``.
    """

    keys: list[torch.Tensor]
    values: list[torch.Tensor]
    bias: torch.Tensor

    def nbytes(self) -> int:
        """Bytes held by the cross-attention K/V, measured from the tensors themselves."""
        return sum(t.numel() * t.element_size() for t in self.keys + self.values)

    def repeated(self, rows: int) -> "CrossMemory":
        """One document's memory seen by ``rows`` rows (views, no copy): independent samples of one input."""
        check_int("rows", rows, 1)
        return CrossMemory([k.expand(rows, -1, -1, -1) for k in self.keys],
                           [v.expand(rows, -1, -1, -1) for v in self.values], self.bias.expand(rows, -1, -1, -1))


def cross_memory(model: T5ForConditionalGeneration, encoded: torch.Tensor, attention_mask: torch.Tensor, *,
                 copies: int = 1) -> CrossMemory:
    """Project the encoder states to every decoder layer's cross-attention K/V, once.

    ``copies=1`` is PID's shared memory. ``copies=U`` first repeats the encoder states U times per
    document, as Hugging Face's ``expand`` path does, so K/V are computed and stored U times.
    """
    if copies > 1:
        encoded = encoded.repeat_interleave(copies, dim=0)
        attention_mask = attention_mask.repeat_interleave(copies, dim=0)
    d_kv = model.config.d_kv
    keys, values = [], []
    for block in model.get_decoder().block:
        attn = block.layer[1].EncDecAttention
        keys.append(heads(attn.k(encoded), d_kv))
        values.append(heads(attn.v(encoded), d_kv))
    bias = additive_mask(attention_mask.bool()[:, None, None, :], encoded.dtype)
    return CrossMemory(keys, values, bias)


def encoded_memory(model: T5ForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
                   copies: int = 1) -> CrossMemory:
    """Encode a tokenized batch once and project it to the cross-attention memory (:func:`cross_memory`)."""
    return cross_memory(model, encode(model, input_ids, attention_mask), attention_mask, copies=copies)


def document_memory(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                    documents: Sequence[str], *, truncation: bool = False, copies: int = 1) -> CrossMemory:
    """Tokenize the documents onto the model's device, encode them once, and project them to every
    layer's cross-attention K/V: what every method does first (chapters 3 to 5)."""
    enc = tokenize_checked(tokenizer, list(documents), what="each document", truncation=truncation,
                           device=model.device)
    return encoded_memory(model, enc["input_ids"], enc["attention_mask"], copies=copies)


def decoder_prefixes(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                     prompts: Sequence[Sequence[str]], *, truncation: bool = False):
    """Left-padded decoder prefixes ``<start> Z_u :`` for every prompt, U padded to the largest U: the
    prompts in the decoder, as PID (chapter 3) and compressed-memory decoding (chapter 8) put them.

    Returns ``(ids, mask, U)``: ``ids`` and ``mask`` have shape ``(b * U, P)``, rows grouped by
    document; documents with fewer prompts are padded with copies of their first prompt, whose
    answers are dropped. Left padding makes every row's next token land in the same column.
    """
    check_prompt_lists(prompts)
    limit = tokenizer.model_max_length
    U = max(len(ps) for ps in prompts)
    start = model.config.decoder_start_token_id
    rows = []
    for ps in prompts:
        for p in list(ps) + [ps[0]] * (U - len(ps)):
            ids = prompt_ids(tokenizer, p)
            if len(ids) + 1 > limit:
                if not truncation:
                    raise ValueError(f"each prompt must be at most {limit - 1} tokens (the model's limit) "
                                     f"unless truncation=True; {p[:40]!r}... has {len(ids)}")
                ids = ids[:limit - 1]
            rows.append([start] + ids)
    ids = torch.tensor(pad_rows(rows, tokenizer.pad_token_id, left=True), device=model.device)
    mask = torch.tensor(pad_rows([[True] * len(r) for r in rows], False, left=True), device=model.device)
    return ids, mask, U


def fold(q: torch.Tensor, rows: int) -> torch.Tensor:
    """(b*U, h, q, d) -> (b, h, U*q, d): the U prompts' queries become one longer query axis."""
    bu, h, n, d = q.shape
    return q.view(rows, bu // rows, h, n, d).transpose(1, 2).reshape(rows, h, (bu // rows) * n, d)


def unfold(x: torch.Tensor, bu: int) -> torch.Tensor:
    """The inverse of :func:`fold`: (b, h, U*q, d) -> (b*U, h, q, d)."""
    b, h, un, d = x.shape
    U = bu // b
    return x.view(b, h, U, un // U, d).transpose(1, 2).reshape(bu, h, un // U, d)


def cross_attention(attn, x: torch.Tensor, keys: torch.Tensor, values: torch.Tensor,
                    bias: torch.Tensor) -> torch.Tensor:
    """T5 cross-attention of ``x`` (b*U, q, d) against K/V of b documents (shared) or b*U (copied)."""
    d_kv = attn.key_value_proj_dim
    q = heads(attn.q(x), d_kv)
    rows = keys.shape[0]
    out = F.scaled_dot_product_attention(fold(q, rows), keys, values, attn_mask=bias, scale=1.0)
    return attn.o(merge(unfold(out, q.shape[0])))


# --- Self-attention: its bias, and a cache that can roll back -------------------------------------

@functools.lru_cache(maxsize=16)
def distance_buckets(num_buckets: int, max_distance: int, device: torch.device) -> torch.Tensor:
    """T5's unidirectional bucket of every distance 0..``max_distance`` into the past, made once per
    configuration and device (it holds no weights, so it is safe to keep). Made outside inference
    mode, so that training, which indexes the bias weights with it, can save it for backward."""
    with torch.inference_mode(False):
        distance = torch.arange(max_distance + 1, device=device)
        return T5Attention._relative_position_bucket(-distance, bidirectional=False, num_buckets=num_buckets,
                                                     max_distance=max_distance)


def bias_table(model: T5ForConditionalGeneration) -> torch.Tensor:
    """T5's learned self-attention bias at every distance into the past, per head, and a mask row.

    Row D (0 <= D <= max_distance) is the bias between a query and a key D positions before it; T5's
    decoder buckets are unidirectional, and every distance from ``max_distance`` on shares the last
    bucket, so these rows cover every distance. The extra last row is the dtype's minimum: the
    "may not attend" entry. A decoder computes the table once per call, from the model's current
    weights, and looks every step's bias up in it (:func:`position_bias`); only the first block
    holds the bias, and every block uses it.
    """
    attn = model.get_decoder().block[0].layer[0].SelfAttention
    weight = attn.relative_attention_bias.weight
    table = weight[distance_buckets(attn.relative_attention_num_buckets, attn.relative_attention_max_distance,
                                    weight.device)]
    return torch.cat([table, torch.full_like(table[:1], torch.finfo(table.dtype).min)])


def position_bias(table: torch.Tensor, distance: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """The self-attention bias ``(..., h, q, k)`` for ``distance`` (query minus key, ``(..., q, k)``)
    where ``allowed``, and the mask row of :func:`bias_table` elsewhere: position bias and mask in one
    lookup. A key ahead of its query (a negative distance) gets distance 0's bias, as in T5, so
    causality must come from ``allowed``.
    """
    index = torch.where(allowed, distance.clamp(0, len(table) - 2), len(table) - 1)
    return F.embedding(index, table).movedim(-1, -3)


def causal_bias(table: torch.Tensor, past: int, new: int, valid: torch.Tensor) -> torch.Tensor:
    """Ordinary decoding's self-attention bias: positions in sequence order, causal and key-padding masks.

    ``table`` is :func:`bias_table`'s; ``valid`` (rows, past+new) is False on padding. Returns
    (rows, h, new, past+new).
    """
    position = torch.arange(past + new, device=valid.device)
    distance = position[past:, None] - position[None, :]
    return position_bias(table, distance[None], (distance >= 0)[None] & valid[:, None, :])


@dataclass
class KVCache:
    """Per decoder layer, preallocated self-attention keys and values, ``(rows, h, capacity, d_kv)``.

    The first :attr:`length` positions hold the tokens so far. A pass writes its new tokens' keys
    and values in place after them (no copy of the cache; a pass that would overflow it first
    doubles it, :meth:`grow`), and :meth:`truncate` rolls the cache back by resetting the length:
    speculative decoding's rejected drafts (chapter 5). Every layer's keys and values are views of
    one buffer ``(2, layers, rows, h, capacity, d_kv)``, so a change to all of them is one operation.
    """

    buffer: torch.Tensor
    length: int = 0

    @classmethod
    def empty(cls, model: T5ForConditionalGeneration, rows: int, capacity: int) -> "KVCache":
        """A cache with room for ``capacity`` tokens of ``rows`` sequences, on the model's device and dtype."""
        check_int("rows", rows, 1)
        check_int("capacity", capacity, 1)
        cfg = model.config
        return cls(torch.zeros((2, cfg.num_decoder_layers, rows, cfg.num_heads, capacity, cfg.d_kv),
                               dtype=model.dtype, device=model.device))

    @property
    def keys(self) -> list[torch.Tensor]:
        """Each layer's keys, ``(rows, h, capacity, d_kv)`` views of the buffer."""
        return list(self.buffer[0])

    @property
    def values(self) -> list[torch.Tensor]:
        """Each layer's values, ``(rows, h, capacity, d_kv)`` views of the buffer."""
        return list(self.buffer[1])

    @property
    def capacity(self) -> int:
        return self.buffer.shape[4]

    def write(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Store one layer's new K/V after :attr:`length`; return that layer's K/V so far, new included."""
        end = self.length + k.shape[2]
        if end > self.capacity:
            self.grow(end)
        keys, values = self.buffer[0, layer], self.buffer[1, layer]
        keys[:, :, self.length:end] = k
        values[:, :, self.length:end] = v
        return keys[:, :, :end], values[:, :, :end]

    def grow(self, needed: int) -> None:
        """Reallocate the buffer with at least twice the capacity (and ``needed``), keeping the tokens
        so far: a decoder that cannot know its length ahead (chapter 4) starts small, and the
        doublings stay few."""
        old = self.buffer
        self.buffer = old.new_zeros((*old.shape[:4], max(needed, 2 * self.capacity), old.shape[5]))
        self.buffer[:, :, :, :, :self.length] = old[:, :, :, :, :self.length]

    def truncate(self, length: int) -> None:
        """Roll back to the first ``length`` tokens (the cross-attention memory is not touched)."""
        check_int("length", length, 0, self.length)
        self.length = length

    def keep(self, start: int, index: torch.Tensor) -> None:
        """Keep, after the first ``start`` tokens, the cached tokens ``start + index`` of each row
        (``index`` (rows, n), ascending), moved into place at ``start .. start + n``, and drop the rest:
        Medusa's accepted branch of a tree (chapter 6). One gather over every layer's keys and values;
        the cross-attention memory is not touched."""
        check_int("start", start, 0, self.length)
        two, layers, rows, h, _, d = self.buffer.shape
        at = (start + index)[None, None, :, None, :, None].expand(two, layers, rows, h, index.shape[1], d)
        self.buffer[:, :, :, :, start:start + index.shape[1]] = self.buffer.gather(4, at)
        self.length = start + index.shape[1]


def self_attention(attn, x: torch.Tensor, cache: KVCache | None, layer: int, bias: torch.Tensor) -> torch.Tensor:
    """T5 self-attention of ``x`` over the cached tokens and itself, under ``bias``; fills ``cache``."""
    d_kv = attn.key_value_proj_dim
    q, k, v = (heads(proj(x), d_kv) for proj in (attn.q, attn.k, attn.v))
    if cache is not None:
        k, v = cache.write(layer, k, v)
    return attn.o(merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)))


def decoder_states(model: T5ForConditionalGeneration, ids: torch.Tensor, memory: CrossMemory,
                   self_bias: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
    """Run the decoder on ``ids`` (rows, new) after ``cache``; return its final hidden states
    (rows, new, d_model), after the final layer norm: what the LM head reads, and Medusa's heads too
    (chapter 6).

    ``self_bias`` (rows or 1, h, new, past+new) is the self-attention's position bias plus its
    mask, the one thing each method chooses. Each block is T5's: self-attention, cross-attention
    (folded when the memory is shared), feed-forward, each pre-normed with a residual connection.
    With a cache, the new tokens' keys and values are appended and its length advances by ``new``.
    """
    decoder = model.get_decoder()
    h = decoder.embed_tokens(ids)
    for layer, block in enumerate(decoder.block):
        sa, ca, ff = block.layer
        h = h + self_attention(sa.SelfAttention, sa.layer_norm(h), cache, layer, self_bias)
        h = h + cross_attention(ca.EncDecAttention, ca.layer_norm(h), memory.keys[layer],
                                memory.values[layer], memory.bias)
        h = ff(h)
    if cache is not None:
        cache.length += ids.shape[1]
    return decoder.final_layer_norm(h)


def lm_logits(model: T5ForConditionalGeneration, states: torch.Tensor) -> torch.Tensor:
    """The LM head on :func:`decoder_states`' output (scaled first when the embeddings are tied)."""
    if model.config.scale_decoder_outputs:
        states = states * model.config.d_model ** -0.5
    return model.lm_head(states)


def decoder_forward(model: T5ForConditionalGeneration, ids: torch.Tensor, memory: CrossMemory,
                    self_bias: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
    """The decoder pass's logits (rows, new, vocab): :func:`lm_logits` of :func:`decoder_states`."""
    return lm_logits(model, decoder_states(model, ids, memory, self_bias, cache))


# --- Decoding one token per step on this pass -------------------------------------------------------

Pick = Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor | None]]


def argmax_pick(logits: torch.Tensor) -> tuple[torch.Tensor, None]:
    """Greedy choice: each row's argmax, and no distribution beside it."""
    return logits.argmax(-1), None


def start_tokens(model: T5ForConditionalGeneration, rows: int) -> torch.Tensor:
    """The decoder's start token for ``rows`` sequences, (rows, 1), on the model's device."""
    return torch.full((rows, 1), model.config.decoder_start_token_id, dtype=torch.long, device=model.device)


def decode_loop(model: T5ForConditionalGeneration, memory: CrossMemory, cache: KVCache, table: torch.Tensor,
                ids: torch.Tensor, valid: torch.Tensor, *, steps: int, pick: Pick = argmax_pick,
                pad: int | None = None, stop_at_eos: bool = True) -> tuple[list[torch.Tensor], list[torch.Tensor], list[torch.Tensor | None]]:
    """The greedy loop every method shares: feed ``ids`` (rows, new) after ``cache``, then one token
    per step, up to ``steps`` tokens per row, until every row has ended.

    ``valid`` (rows, cache.length + new) is False on padding; ``pick`` turns a step's logits
    (rows, vocab) into its tokens and, when it samples, their distribution. A row ends at its ``</s>``; with ``pad`` given, an ended row makes ``pad``
    from then on. Returns each step's tokens, logits and distributions. One host synchronisation a
    step: whether every row has ended; with ``stop_at_eos=False`` none, and every step is made
    (chapter 5's draft, whose guesses the target judges).
    """
    eos = model.config.eos_token_id
    ended = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    tokens, logits, dists = [], [], []
    for _ in range(steps):
        out = decoder_forward(model, ids, memory, causal_bias(table, cache.length, ids.shape[1], valid), cache)[:, -1]
        token, dist = pick(out)
        if pad is not None:
            token = token.masked_fill(ended, pad)
        tokens.append(token)
        logits.append(out)
        dists.append(dist)
        ended |= token == eos
        if stop_at_eos and bool(ended.all()):
            break
        ids = token[:, None]
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    return tokens, logits, dists


def greedy(model: T5ForConditionalGeneration, memory: CrossMemory, prefix: torch.Tensor, valid: torch.Tensor, *,
           max_new_tokens: int, pad: int, pick: Pick = argmax_pick) -> tuple[torch.Tensor, torch.Tensor]:
    """Greedy decoding with the KV cache after left-padded ``prefix`` rows; ``valid`` is False on padding.

    Returns the new tokens (rows, steps) and each step's logits (rows, steps, vocab). Every row stops
    at its own ``</s>`` (later positions hold ``pad``); the loop ends when all rows have stopped or
    after ``max_new_tokens`` steps (:func:`decode_loop`). PID (chapter 3) decodes its prompt rows
    with it; the sequential baseline (chapters 4 and 5) decodes from the start token alone, and
    samples with another ``pick``.
    """
    check_int("max_new_tokens", max_new_tokens, 1)
    cache = KVCache.empty(model, rows=prefix.shape[0], capacity=prefix.shape[1] + max_new_tokens)
    tokens, logits, _ = decode_loop(model, memory, cache, bias_table(model), prefix, valid, steps=max_new_tokens,
                                    pick=pick, pad=pad)
    return torch.stack(tokens, dim=1), torch.stack(logits, dim=1)


def pad_after_eos(tokens: torch.Tensor, done: torch.Tensor, *, eos: int, pad: int) -> torch.Tensor:
    """``pad`` after each row's first ``</s>`` and in rows already ``done``; marks the rows that end
    here in ``done`` (chapter 5's rounds, which keep several tokens at once)."""
    is_eos = tokens == eos
    after = (is_eos.int().cumsum(1) - is_eos.int()) > 0
    tokens = tokens.masked_fill(after | done[:, None], pad)
    done |= is_eos.any(1)
    return tokens


def trim(tokens: torch.Tensor, pad: int) -> torch.Tensor:
    """Drop trailing columns that are padding in every row."""
    real = (tokens != pad).any(0).nonzero()
    return tokens[:, :int(real[-1]) + 1] if len(real) else tokens[:, :0]
