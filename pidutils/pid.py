"""Prompt-in-decoder (PID) decoding on a Hugging Face T5: encode once, decode in parallel (chapter 3).

For one document X and U prompts Z_1..Z_U, PID runs the encoder once, puts each prompt in the
decoder as a prefix "<start> Z_u :", and decodes the U answers Y_u in parallel, each with its own
self-attention KV cache. The cross-attention keys and values of X are computed once per layer and
shared by all U prompts *without copies*: the U prompts' queries are folded into the query-length
axis, Q (b, h, U*q, d) against K/V (b, h, n_s, d). This is exact because T5's cross-attention has
no position bias and no mask between queries.

``cross="copy"`` is the same loop with the encoder states repeated U times (Hugging Face's
``expand``/``repeat_interleave`` path), which computes and stores U copies of K/V: the reference
that chapter 3 measures PID against. :func:`pid_reference` is the slow, obviously correct check:
Hugging Face ``generate`` on the copied encoder states.

The decoder below is written out with the model's own weights (its layer norms, projections and
feed-forward blocks), so that every step the chapter teaches is visible here.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from .checks import check_choice, check_int, check_prompt_lists, check_text
from .pie import check_prompts, length_buckets, tokenize_checked
from .tokenizer import check_vocab

SEPARATOR = ":"


def check_encoder_decoder(model) -> None:
    """PID needs a T5-style encoder-decoder; anything else is a ``ValueError``."""
    config = getattr(model, "config", None)
    if not getattr(config, "is_encoder_decoder", False) or getattr(config, "model_type", "") != "t5":
        raise ValueError(f"model must be a T5 encoder-decoder (T5ForConditionalGeneration), "
                         f"got {type(model).__name__}")


# --- Step 1: the prompts as decoder prefixes --------------------------------------------------

def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """The token ids of ``"Z_u :"`` without ``</s>``: the decoder prefix after the start token."""
    check_text("prompt", prompt)
    return tokenizer(f"{prompt} {SEPARATOR}", add_special_tokens=False)["input_ids"]


def decoder_prefixes(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                     prompts: Sequence[Sequence[str]], truncation: bool = False):
    """Left-padded decoder prefixes ``<start> Z_u :`` for every prompt, U padded to the largest U.

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
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), tokenizer.pad_token_id, dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, r in enumerate(rows):
        ids[i, width - len(r):] = torch.tensor(r)
        mask[i, width - len(r):] = True
    return ids.to(model.device), mask.to(model.device), U


# --- Step 2: encode once, and the cross-attention memory -----------------------------------------

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


def _heads(x: torch.Tensor, d_kv: int) -> torch.Tensor:
    """(rows, n, h*d) -> (rows, h, n, d)."""
    return x.view(x.shape[0], x.shape[1], -1, d_kv).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(rows, h, n, d) -> (rows, n, h*d)."""
    return x.transpose(1, 2).reshape(x.shape[0], x.shape[2], -1)


def _additive(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """A boolean "may attend" mask as an additive bias: 0 where valid, the dtype's minimum elsewhere."""
    return torch.zeros(valid.shape, dtype=dtype, device=valid.device).masked_fill(~valid, torch.finfo(dtype).min)


def encode(model: T5ForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Run the encoder once per document: (b, n_s, d)."""
    return model.get_encoder()(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def cross_memory(model: T5ForConditionalGeneration, encoded: torch.Tensor, attention_mask: torch.Tensor,
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
        keys.append(_heads(attn.k(encoded), d_kv))
        values.append(_heads(attn.v(encoded), d_kv))
    bias = _additive(attention_mask.bool()[:, None, None, :], encoded.dtype)
    return CrossMemory(keys, values, bias)


# --- Step 3: one decoder pass with folded cross-attention ---------------------------------------

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
    q = _heads(attn.q(x), d_kv)
    rows = keys.shape[0]
    out = F.scaled_dot_product_attention(fold(q, rows), keys, values, attn_mask=bias, scale=1.0)
    return attn.o(_merge(unfold(out, q.shape[0])))


@dataclass
class SelfCache:
    """Per decoder layer, the self-attention keys and values so far, (b*U, h, t, d_kv) each."""

    keys: list[torch.Tensor]
    values: list[torch.Tensor]

    @property
    def length(self) -> int:
        return self.keys[0].shape[2] if self.keys else 0


def self_attention_bias(model: T5ForConditionalGeneration, past: int, new: int,
                        valid: torch.Tensor) -> torch.Tensor:
    """T5's relative position bias plus the causal and key-padding masks: (b*U, h, new, past+new).

    ``valid`` is (b*U, past+new), False on left padding.
    """
    attn = model.get_decoder().block[0].layer[0].SelfAttention
    total = past + new
    position = attn.compute_bias(new, total, device=valid.device, past_seen_tokens=past)
    causal = torch.ones(new, total, dtype=torch.bool, device=valid.device).tril(diagonal=past)
    allowed = causal[None, None] & valid[:, None, None, :]
    return position.to(model.dtype) + _additive(allowed, model.dtype)


def self_attention(attn, x: torch.Tensor, cache: SelfCache | None, layer: int,
                   bias: torch.Tensor) -> torch.Tensor:
    """T5 self-attention over the prefix so far; appends this step's K/V to ``cache``."""
    d_kv = attn.key_value_proj_dim
    q, k, v = (_heads(proj(x), d_kv) for proj in (attn.q, attn.k, attn.v))
    if cache is not None:
        if len(cache.keys) > layer:
            k = torch.cat([cache.keys[layer], k], dim=2)
            v = torch.cat([cache.values[layer], v], dim=2)
            cache.keys[layer], cache.values[layer] = k, v
        else:
            cache.keys.append(k)
            cache.values.append(v)
    return attn.o(_merge(F.scaled_dot_product_attention(q, k, v, attn_mask=bias, scale=1.0)))


def decoder_forward(model: T5ForConditionalGeneration, ids: torch.Tensor, memory: CrossMemory,
                    valid: torch.Tensor, cache: SelfCache | None = None) -> torch.Tensor:
    """Run the decoder on ``ids`` (b*U, new) after ``cache``; return the logits (b*U, new, vocab).

    ``valid`` (b*U, past+new) marks real tokens. Each block is T5's: self-attention, cross-attention
    (folded when the memory is shared), feed-forward, each pre-normed with a residual connection.
    """
    decoder = model.get_decoder()
    past = cache.length if cache is not None else 0
    bias = self_attention_bias(model, past, ids.shape[1], valid)
    h = decoder.embed_tokens(ids)
    for layer, block in enumerate(decoder.block):
        sa, ca, ff = block.layer
        h = h + self_attention(sa.SelfAttention, sa.layer_norm(h), cache, layer, bias)
        h = h + cross_attention(ca.EncDecAttention, ca.layer_norm(h), memory.keys[layer],
                                memory.values[layer], memory.bias)
        h = ff(h)
    h = decoder.final_layer_norm(h)
    if model.config.scale_decoder_outputs:
        h = h * model.config.d_model ** -0.5
    return model.lm_head(h)


# --- Step 4: greedy decoding of all U answers in parallel ---------------------------------------

def check_pid_inputs(model, tokenizer, documents, prompts, max_new_tokens: int, cross: str) -> None:
    """Every ``ValueError`` PID raises, before any work."""
    check_encoder_decoder(model)
    check_prompts(documents, prompts)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_choice("cross", cross, ["shared", "copy"])
    check_vocab(tokenizer, model)


@torch.inference_mode()
def pid_generate_ids(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                     documents: Sequence[str], prompts: Sequence[Sequence[str]], max_new_tokens: int = 8,
                     cross: str = "shared", truncation: bool = False, return_scores: bool = False):
    """Greedy PID decoding; returns the new token ids (b*U, steps), and per-step logits if asked.

    The encoder runs once per document; every row stops at its own ``</s>`` (later positions hold
    padding), and the loop ends when all rows have stopped or after ``max_new_tokens`` steps.
    """
    check_pid_inputs(model, tokenizer, documents, prompts, max_new_tokens, cross)
    enc = tokenize_checked(tokenizer, list(documents), "each document", truncation, model.device)
    ids, valid, U = decoder_prefixes(model, tokenizer, prompts, truncation)
    memory = cross_memory(model, encode(model, enc["input_ids"], enc["attention_mask"]), enc["attention_mask"],
                          copies=U if cross == "copy" else 1)
    cache = SelfCache([], [])
    eos, pad = model.config.eos_token_id, tokenizer.pad_token_id
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    tokens, scores = [], []
    step_ids = ids
    for _ in range(max_new_tokens):
        logits = decoder_forward(model, step_ids, memory, valid, cache)[:, -1]
        token = logits.argmax(-1).masked_fill(done, pad)
        tokens.append(token)
        scores.append(logits)
        done |= token == eos
        if bool(done.all()):
            break
        step_ids = token[:, None]
        valid = torch.cat([valid, torch.ones_like(valid[:, :1])], dim=1)
    out = torch.stack(tokens, dim=1)
    return (out, torch.stack(scores, dim=1)) if return_scores else out


def split_answers(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor,
                  prompts: Sequence[Sequence[str]]) -> list[list[str]]:
    """Decode (b*U, steps) ids into each document's answers, dropping the padding prompts."""
    check_prompt_lists(prompts)
    texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    U = len(texts) // len(prompts)
    return [texts[i * U:i * U + len(ps)] for i, ps in enumerate(prompts)]


def pid_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                 documents: Sequence[str], prompts: Sequence[Sequence[str]], max_new_tokens: int = 8,
                 cross: str = "shared", truncation: bool = False) -> list[list[str]]:
    """Answer every prompt of every document, PID-style; returns the answers per document."""
    ids = pid_generate_ids(model, tokenizer, documents, prompts, max_new_tokens, cross, truncation)
    return split_answers(tokenizer, ids, prompts)


# --- The reference: Hugging Face generate on copied encoder states -------------------------------

@torch.inference_mode()
def pid_reference(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                  documents: Sequence[str], prompts: Sequence[Sequence[str]], max_new_tokens: int = 8):
    """PID by Hugging Face's own path: encoder states repeated U times, then ``model.generate``.

    Returns ``(ids, scores)`` like :func:`pid_generate_ids` with ``return_scores=True``.
    """
    check_pid_inputs(model, tokenizer, documents, prompts, max_new_tokens, "copy")
    enc = tokenize_checked(tokenizer, list(documents), "each document", False, model.device)
    ids, valid, U = decoder_prefixes(model, tokenizer, prompts)
    encoded = encode(model, enc["input_ids"], enc["attention_mask"]).repeat_interleave(U, dim=0)
    out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                         attention_mask=enc["attention_mask"].repeat_interleave(U, dim=0),
                         decoder_input_ids=ids, decoder_attention_mask=valid.long(),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)


# --- Training: the encoder once per dialogue, the loss on the answers only ----------------------

def pid_batches(split, tokenizer: PreTrainedTokenizerFast, model: T5ForConditionalGeneration, batch_size: int = 8,
                curriculum: int = 0):
    """Training batches for PID: dialogues of similar length, each with all its slots as prompts.

    Each decoder row is ``<start> Z_u : Y_u </s>``, right-padded; ``labels`` holds the next token
    on the answer and ``</s>`` positions and -100 elsewhere (prompt and padding), so the loss is on
    the answers only. Returns ``next_batch(rng) -> dict`` for :func:`pidutils.train.train` with
    :func:`pid_loss`.
    """
    check_int("batch_size", batch_size, 1)
    dialogues, slots, values = split["dialogue"], split["slots"], split["values"]
    draw = length_buckets([len(d.split()) for d in dialogues], batch_size, curriculum)
    start, eos, pad = model.config.decoder_start_token_id, model.config.eos_token_id, tokenizer.pad_token_id

    def next_batch(rng) -> dict:
        picked = draw(rng)
        rows, targets = [], []
        for i in picked:
            for slot, value in zip(slots[i], values[i]):
                prefix = [start] + prompt_ids(tokenizer, slot)
                answer = tokenizer(value, add_special_tokens=False)["input_ids"] + [eos]
                rows.append(prefix + answer[:-1])
                targets.append([-100] * (len(prefix) - 1) + answer)
        width = max(len(r) for r in rows)
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        labels = torch.full((len(rows), width), -100, dtype=torch.long)
        for k, (r, t) in enumerate(zip(rows, targets)):
            ids[k, :len(r)] = torch.tensor(r)
            labels[k, :len(t)] = torch.tensor(t)
        enc = tokenizer([dialogues[i] for i in picked], padding=True, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "decoder_input_ids": ids, "labels": labels}

    return next_batch


def pid_loss(model: T5ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """Cross-entropy on the answer tokens; one encoding per dialogue receives every prompt's gradient."""
    memory = cross_memory(model, encode(model, batch["input_ids"], batch["attention_mask"]),
                          batch["attention_mask"])
    ids = batch["decoder_input_ids"]
    valid = torch.ones_like(ids, dtype=torch.bool)  # right padding: the causal mask hides it
    logits = decoder_forward(model, ids, memory, valid)
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
