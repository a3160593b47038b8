"""The sequential baseline: the whole dialogue state as one sequence, one token per step (chapters 4 and 5).

It is what the pipelined decoder (chapter 4) and speculative decoding (chapter 5) are measured
against, so it lives in the engine, on the same decoder pass and cache as they run on
(:func:`pidutils.t5.greedy`). The target is the state's subsequences "slot : value" joined by
:data:`pidutils.data.SEQUENTIAL_SEPARATOR`; :func:`sequential_batches` trains on it.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .batching import seq2seq_batch, word_buckets
from .checks import check_documents, check_int
from .data import full_state_view, sequential_target, split_sequential
from .t5 import CrossMemory, Pick, argmax_pick, check_t5, document_memory, greedy, start_tokens
from .tokenizer import check_vocab

MAX_NEW_TOKENS = 120  # the full-state decoders' limit: the longest test state is about 80 tokens


def check_request(model, tokenizer, documents, *, max_new_tokens: int = MAX_NEW_TOKENS) -> None:
    """Every ``ValueError`` of the full-state decoders (chapters 4 and 5), before any work."""
    check_t5(model)
    check_documents(documents)
    check_vocab(tokenizer, model)
    check_int("max_new_tokens", max_new_tokens, 1)


@torch.inference_mode()
def sequential_decode(model: T5ForConditionalGeneration, memory: CrossMemory, *, pad: int,
                      max_new_tokens: int = MAX_NEW_TOKENS, pick: Pick = argmax_pick) -> torch.Tensor:
    """The decoding phase alone: one token per step from the start token (:func:`pidutils.t5.greedy`);
    ``pick`` chooses each token (greedy unless chapter 5's sampler is given)."""
    start = start_tokens(model, memory.keys[0].shape[0])
    tokens, _ = greedy(model, memory, start, torch.ones_like(start, dtype=torch.bool), max_new_tokens=max_new_tokens,
                       pad=pad, pick=pick)
    return tokens


@torch.inference_mode()
def sequential_generate_ids(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                            documents: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                            truncation: bool = False) -> torch.Tensor:
    """The whole state as one sequence, one token per step: the encoder once per document, then
    :func:`sequential_decode`."""
    check_request(model, tokenizer, documents, max_new_tokens=max_new_tokens)
    memory = document_memory(model, tokenizer, documents, truncation=truncation)
    return sequential_decode(model, memory, pad=tokenizer.pad_token_id, max_new_tokens=max_new_tokens)


def sequential_states(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor) -> list[list[str]]:
    """Each row's subsequences, cut from its one generated sequence at the separator."""
    return [split_sequential(text) for text in tokenizer.batch_decode(ids, skip_special_tokens=True)]


def sequential_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                        documents: Sequence[str], *, max_new_tokens: int = MAX_NEW_TOKENS,
                        truncation: bool = False) -> list[list[str]]:
    """Each document's subsequences, split from the one generated sequence at the separator."""
    ids = sequential_generate_ids(model, tokenizer, documents, max_new_tokens=max_new_tokens, truncation=truncation)
    return sequential_states(tokenizer, ids)


def sequential_batches(split, tokenizer: PreTrainedTokenizerFast, *, batch_size: int = 8,
                       curriculum: int = 0) -> Callable[[random.Random], dict]:
    """Training batches for the sequential decoder: dialogue -> its subsequences joined by the separator.

    Plain sequence-to-sequence pairs (Hugging Face's shifted ``labels``, -100 on padding), so
    :func:`pidutils.train.train` uses the model's own loss. Returns ``next_batch(rng) -> dict``.
    """
    check_int("batch_size", batch_size, 1)
    view = full_state_view(split)
    documents = view["document"]
    targets = [sequential_target(s) for s in view["subsequences"]]
    draw = word_buckets(documents, batch_size=batch_size, curriculum=curriculum)

    def next_batch(rng: random.Random) -> dict:
        picked = draw(rng)
        return seq2seq_batch(tokenizer, [documents[i] for i in picked], [targets[i] for i in picked])

    return next_batch
