"""PID's idea in decoder-only models: one shared prefix, many continuations (chapter 7).

A decoder-only model answers U questions of one document as U sequences "document </s> Z_u :",
which share the document as their prefix. Three ways to decode them, on one machinery
(:mod:`pidutils.causal`), differing only in what each query attends to:

- ``"repeated"``: every sequence is prefilled whole, so the document runs U times, and each row's
  KV cache holds its own copy of the prefix (the PIE of decoder-only models);
- ``"cached"``: prefix caching, as vLLM's automatic prefix caching and SGLang's RadixAttention do:
  the document is prefilled once, and each row gets a copy of its KV; every step still reads the
  prefix once per row;
- ``"shared"``: shared-prefix attention, as Hydragen and FlashInfer's cascade do: the prefix KV is
  held once, the U rows' queries are folded into one query axis and attend to it in one product
  (PID's folding, :func:`pidutils.t5.fold`), each row attends to its own suffix, and the two parts
  are merged exactly by their log-sum-exp (:func:`pidutils.causal.merge_attention`).

Every way places question u of document d at positions n_d, n_d + 1, ... after the document's n_d
tokens, as the model's own single-sequence decoding does, so all three make Hugging Face
``generate``'s tokens (``tests/test_shared_prefix.py``). Training (:func:`shared_prefix_batches`,
:func:`shared_prefix_loss`) uses the same layout: the document once, the 30 questions with their
answers as branches after it.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from .batching import pad_rows, prompt_ids, tokenize_checked, word_buckets
from .causal import (Attention, StepAttention, allowed_bias, attend, causal_allowed, causal_states,
                     cached_attention, check_causal, greedy_loop, kv_cache, merge_attention)
from .checks import check_choice, check_documents, check_int, check_text
from .t5 import KVCache, fold, unfold
from .tokenizer import check_vocab

WAYS = ("repeated", "cached", "shared")
ANSWER_TOKENS = 8  # new tokens per answer: every slot value of the dialogue set fits


# --- The layout: the document once, the questions after it -----------------------------------------

@dataclass
class Request:
    """b documents, right-padded (``prefix`` (b, n), ``prefix_valid``), and U questions each,
    left-padded (``questions`` (b*U, q), ``question_valid``), rows grouped by document."""

    prefix: torch.Tensor
    prefix_valid: torch.Tensor
    questions: torch.Tensor
    question_valid: torch.Tensor

    @property
    def U(self) -> int:
        return self.questions.shape[0] // self.prefix.shape[0]

    def question_positions(self) -> torch.Tensor:
        """Each question token's position: right after its own document, (b*U, q)."""
        start = self.prefix_valid.sum(1).repeat_interleave(self.U)
        return start[:, None] + (self.question_valid.long().cumsum(1) - 1).clamp(min=0)


def check_request(model, tokenizer, documents, questions, *, max_new_tokens: int) -> None:
    """Every ``ValueError`` of chapter 7's decoders, before any work: the model, the documents, U >= 1
    questions of text, the answer length, and that document, question and answer fit the context."""
    check_causal(model)
    check_documents(documents)
    if isinstance(questions, str) or not isinstance(questions, Sequence) or len(questions) == 0:
        raise ValueError("questions must be a non-empty list of strings (U >= 1), asked of every document")
    for q in questions:
        check_text("each question", q)
    check_vocab(tokenizer, model)
    check_int("max_new_tokens", max_new_tokens, 1)
    limit = model.config.max_position_embeddings
    longest = max(len(ids) for ids in tokenizer(list(documents))["input_ids"]) + max(
        len(prompt_ids(tokenizer, q)) for q in questions) + max_new_tokens
    if longest > limit:
        raise ValueError(f"questions must fit the context: document, question and max_new_tokens must be at most "
                         f"{limit} tokens (max_position_embeddings), the longest is {longest}")


def make_request(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, documents: Sequence[str],
                 questions: Sequence[str]) -> Request:
    """Tokenize the documents (each ending in ``</s>``, the separator) and the questions "Z_u :" onto
    the model's device."""
    enc = tokenize_checked(tokenizer, list(documents), what="each document", truncation=False, device=model.device)
    rows = [prompt_ids(tokenizer, q) for _ in documents for q in questions]
    ids = torch.tensor(pad_rows(rows, tokenizer.pad_token_id, left=True), device=model.device)
    valid = torch.tensor(pad_rows([[True] * len(r) for r in rows], False, left=True), device=model.device)
    return Request(enc["input_ids"], enc["attention_mask"].bool(), ids, valid)


# --- Step 1: prefill the document once ---------------------------------------------------------------

def prefill(model: PreTrainedModel, ids: torch.Tensor, valid: torch.Tensor) -> KVCache:
    """The documents' KV cache (rows, n), causal, padding masked; the logits are not needed."""
    cache = kv_cache(model, ids.shape[0], ids.shape[1])
    positions = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    causal_states(model, ids, positions, cached_attention(cache, allowed_bias(causal_allowed(valid, ids.shape[1]),
                                                                              model.dtype)))
    cache.length = ids.shape[1]
    return cache


# --- Step 2: what a step attends to, three ways --------------------------------------------------------

def own_cache(dtype: torch.dtype) -> StepAttention:
    """The repeated and cached ways: each row attends to its own cache, prefix copy included."""
    return lambda cache, allowed: cached_attention(cache, allowed_bias(allowed, dtype))


def shared_prefix(prefix: KVCache, prefix_valid: torch.Tensor, dtype: torch.dtype) -> StepAttention:
    """The shared way: the cache holds the rows' suffixes only; each layer's queries attend to the
    prefix, held once per document, folded into one product, and to their own suffix, and the two
    parts are merged by their log-sum-exp."""
    prefix_bias = allowed_bias(prefix_valid[:, None, :], dtype)  # (b, 1, 1, n): key padding

    def step(cache: KVCache, allowed: torch.Tensor) -> Attention:
        suffix_bias = allowed_bias(allowed, dtype)

        def attention(layer: int, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
            keys, values = cache.write(layer, k, v)
            out_s, lse_s = attend(q, keys, values, suffix_bias)
            rows, b = q.shape[0], prefix.buffer.shape[2]
            out_p, lse_p = attend(fold(q, b), prefix.buffer[0, layer, :, :, :prefix.length],
                                  prefix.buffer[1, layer, :, :, :prefix.length], prefix_bias)
            return merge_attention(unfold(out_p, rows), unfold(lse_p, rows), out_s, lse_s)[0]
        return attention
    return step


def copied_prefix(prefix: KVCache, U: int, capacity: int) -> KVCache:
    """The cached way's cache: the prefix's KV copied into each of the U rows of its document."""
    layers, kv, b, heads, _, d = prefix.buffer.shape
    cache = KVCache(prefix.buffer.new_zeros((layers, kv, b * U, heads, capacity, d)))
    by_document = cache.buffer.view(layers, kv, b, U, heads, capacity, d)  # a document's U rows together
    n = prefix.length
    by_document[:, :, :, :, :, :n] = prefix.buffer[:, :, :, None, :, :n]  # broadcast: no temporary copy
    cache.length = prefix.length
    return cache


# --- Step 3: lay out the caches, then decode all U answers in parallel ---------------------------------

@dataclass
class Prepared:
    """A way's state after the document's prefill, ready to decode: the first chunk (each row's
    question, or for the repeated way its whole sequence) with its positions and padding, the rows'
    cache, what a step attends to, and the prefix KV held apart from it (the shared way's)."""

    ids: torch.Tensor
    positions: torch.Tensor
    valid: torch.Tensor
    cache: KVCache
    step_attention: StepAttention
    prefix: KVCache | None = None

    def kv_bytes(self) -> int:
        """Bytes of keys and values held, measured from the tensors: the rows' cache up to its length,
        and the shared prefix."""
        held = [c for c in (self.cache, self.prefix) if c is not None]
        return sum(c.buffer[:, :, :, :, :c.length].numel() * c.buffer.element_size() for c in held)


def prepare(model: PreTrainedModel, request: Request, *, way: str, max_new_tokens: int) -> Prepared:
    """What each way does before its decoding phase: the repeated way nothing (its rows are whole
    sequences); the cached way prefills the documents and copies their KV into the U rows of each;
    the shared way prefills the documents and keeps their KV once."""
    check_choice("way", way, WAYS)
    ids, valid, positions = request.questions, request.question_valid, request.question_positions()
    room = ids.shape[1] + max_new_tokens
    if way == "repeated":
        ids, valid = repeated_rows(request)
        positions = (valid.long().cumsum(1) - 1).clamp(min=0)
        return Prepared(ids, positions, valid, kv_cache(model, ids.shape[0], ids.shape[1] + max_new_tokens),
                        own_cache(model.dtype))
    prefix = prefill(model, request.prefix, request.prefix_valid)
    if way == "cached":
        valid = torch.cat([request.prefix_valid.repeat_interleave(request.U, 0), valid], 1)
        return Prepared(ids, positions, valid, copied_prefix(prefix, request.U, prefix.length + room),
                        own_cache(model.dtype))
    return Prepared(ids, positions, valid, kv_cache(model, ids.shape[0], room),
                    shared_prefix(prefix, request.prefix_valid, model.dtype), prefix)


def decode_prepared(model: PreTrainedModel, prepared: Prepared, *, max_new_tokens: int, pad: int) -> torch.Tensor:
    """The decoding phase: the first chunk in one pass, then one token a step (:func:`pidutils.causal.greedy_loop`)."""
    return greedy_loop(model, prepared.ids, prepared.positions, prepared.valid, cache=prepared.cache,
                       step_attention=prepared.step_attention, max_new_tokens=max_new_tokens, pad=pad)


def decode_request(model: PreTrainedModel, request: Request, *, way: str, max_new_tokens: int, pad: int) -> torch.Tensor:
    """The U answers of every document, ``way`` one of :data:`WAYS`: new tokens (b*U, steps)."""
    prepared = prepare(model, request, way=way, max_new_tokens=max_new_tokens)
    return decode_prepared(model, prepared, max_new_tokens=max_new_tokens, pad=pad)


def repeated_rows(request: Request) -> tuple[torch.Tensor, torch.Tensor]:
    """The repeated way's input: each row's document and question as one sequence, left-padded."""
    rows = []
    for r, (question, keep) in enumerate(zip(request.questions, request.question_valid)):
        d = r // request.U
        rows.append(torch.cat([request.prefix[d][request.prefix_valid[d]], question[keep]]).tolist())
    device = request.prefix.device
    ids = torch.tensor(pad_rows(rows, 0, left=True), device=device)
    valid = torch.tensor(pad_rows([[True] * len(r) for r in rows], False, left=True), device=device)
    return ids, valid


@torch.inference_mode()
def shared_prefix_generate_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, documents: Sequence[str],
                               questions: Sequence[str], *, way: str = "shared",
                               max_new_tokens: int = ANSWER_TOKENS) -> torch.Tensor:
    """Greedy answers to every question of every document: new tokens (b*U, steps), rows grouped by
    document, ``pad`` after each ``</s>``."""
    check_request(model, tokenizer, documents, questions, max_new_tokens=max_new_tokens)
    check_choice("way", way, WAYS)
    request = make_request(model, tokenizer, documents, questions)
    return decode_request(model, request, way=way, max_new_tokens=max_new_tokens, pad=tokenizer.pad_token_id)


def shared_prefix_generate(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, documents: Sequence[str],
                           questions: Sequence[str], *, way: str = "shared",
                           max_new_tokens: int = ANSWER_TOKENS) -> list[list[str]]:
    """Each document's U answers, as text."""
    ids = shared_prefix_generate_ids(model, tokenizer, documents, questions, way=way, max_new_tokens=max_new_tokens)
    texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    U = len(questions)
    return [texts[i:i + U] for i in range(0, len(texts), U)]


@torch.inference_mode()
def hf_reference(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, document: str, question: str, *,
                 max_new_tokens: int = ANSWER_TOKENS) -> list[int]:
    """Hugging Face ``generate`` on one "document </s> Z_u :", greedy: its new tokens up to ``</s>``."""
    ids = tokenizer(document)["input_ids"] + prompt_ids(tokenizer, question)
    out = model.generate(torch.tensor([ids], device=model.device), max_new_tokens=max_new_tokens, do_sample=False,
                         eos_token_id=model.config.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    return out[0, len(ids):].tolist()


# --- Training: the document once, every question and answer as a branch after it -------------------

def branch_rows(tokenizer: PreTrainedTokenizerFast, document: str, slots: Sequence[str],
                values: Sequence[str]) -> list[tuple[int, int, int, int]]:
    """One dialogue's training layout as (token, position, branch, label) rows: the document (branch
    0, no labels), then for each slot "Z_u : Y_u </s>" as branch u + 1 at positions after the
    document, labelled with its next token from the answer on."""
    doc = tokenizer(document)["input_ids"]
    rows = [(t, p, 0, -100) for p, t in enumerate(doc)]
    eos = tokenizer.eos_token_id
    for u, (slot, value) in enumerate(zip(slots, values), start=1):
        question = prompt_ids(tokenizer, slot)
        branch = question + tokenizer(" " + value, add_special_tokens=False)["input_ids"] + [eos]
        labels = [-100] * (len(question) - 1) + branch[len(question):]
        rows += [(t, len(doc) + j, u, y) for j, (t, y) in enumerate(zip(branch[:-1], labels))]
    return rows


def tree_allowed(branch: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """The training layout's "may attend" (rows, n, n): a token sees the document before it and the
    earlier tokens of its own branch, never another branch."""
    index = torch.arange(branch.shape[1], device=branch.device)
    same = (branch[:, None, :] == 0) | (branch[:, None, :] == branch[:, :, None])
    return same & (index[None, None, :] <= index[None, :, None]) & valid[:, None, :]


def shared_prefix_batches(split, tokenizer: PreTrainedTokenizerFast, *, batch_size: int = 8,
                          curriculum: int = 0) -> Callable[[random.Random], dict]:
    """Training batches of dialogues of similar length, each laid out by :func:`branch_rows`."""
    check_int("batch_size", batch_size, 1)
    documents = split["dialogue"]
    slots, values = split["slots"], split["values"]
    draw = word_buckets(documents, batch_size=batch_size, curriculum=curriculum)

    def next_batch(rng: random.Random) -> dict:
        rows = [branch_rows(tokenizer, documents[i], slots[i], values[i]) for i in draw(rng)]
        ids, positions, branch, labels = torch.tensor(pad_rows(rows, (tokenizer.pad_token_id, 0, 0, -100))).unbind(-1)
        valid = torch.tensor(pad_rows([[True] * len(r) for r in rows], False))
        return {"input_ids": ids, "positions": positions, "branch": branch, "valid": valid, "labels": labels}
    return next_batch


def shared_prefix_loss(model: PreTrainedModel, batch: dict) -> torch.Tensor:
    """Cross-entropy of every answer token, all branches of a dialogue in one pass over the tree."""
    bias = allowed_bias(tree_allowed(batch["branch"], batch["valid"]), model.dtype)
    states = causal_states(model, batch["input_ids"], batch["positions"],  # PyTorch's fused attention: no lse needed
                           lambda layer, q, k, v: F.scaled_dot_product_attention(q, k, v, attn_mask=bias, enable_gqa=True))
    labelled = batch["labels"] != -100
    return F.cross_entropy(model.lm_head(states[labelled]), batch["labels"][labelled])
