"""Prompt-in-encoder (PIE) decoding: the document is encoded once per prompt (chapter 2).

For U prompts Z_1..Z_U over one document X, PIE builds U encoder inputs "Z_u : X" and decodes the
U answers Y_u in one batch, greedy, with the KV cache: through Hugging Face's ``generate``
(:func:`pie_generate`, the outside reference), or on the book's own decoder loop, the one PID runs
on (:func:`pie_loop`). It is the baseline that PID (chapter 3) beats.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .batching import seq2seq_batch, tokenize_checked, word_buckets
from .checks import check_int, check_prompts
from .data import pie_source
from .t5 import check_t5, encoded_memory, greedy, start_tokens
from .tokenizer import check_vocab

SET_SLOT_EVERY = 4  # one pair in four asks a slot that is set; see pie_batches
ANSWER_TOKENS = 8  # new tokens per answer: every slot value of the dialogue set fits


def check_request(model, tokenizer, documents, prompts, *, max_new_tokens: int) -> None:
    """Every ``ValueError`` PIE raises, before any work."""
    check_prompts(documents, prompts)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_vocab(tokenizer, model)


def pie_inputs(tokenizer: PreTrainedTokenizerFast, documents: Sequence[str], prompts: Sequence[Sequence[str]], *,
               truncation: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """One encoder input "Z_u : X" per prompt, all ``sum(U_i)`` of them in one padded batch."""
    sources = [pie_source(p, doc) for doc, ps in zip(documents, prompts) for p in ps]
    return tokenize_checked(tokenizer, sources, what="each prompt + document", truncation=truncation, device=device)


def per_document(answers: Sequence[str], prompts: Sequence[Sequence[str]]) -> list[list[str]]:
    """The flat answers of every prompt of every document, cut back into one list per document."""
    result, start = [], 0
    for ps in prompts:
        result.append([a.strip() for a in answers[start:start + len(ps)]])
        start += len(ps)
    return result


@torch.inference_mode()
def pie_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                 documents: Sequence[str], prompts: Sequence[Sequence[str]], *, max_new_tokens: int = ANSWER_TOKENS,
                 truncation: bool = False) -> list[list[str]]:
    """Answer every prompt of every document, PIE-style, through Hugging Face's ``generate``.

    All ``sum(U_i)`` sequences are encoded and decoded as one batch. Returns the answers per document.
    """
    check_request(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens)
    enc = pie_inputs(tokenizer, documents, prompts, truncation=truncation, device=model.device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return per_document(tokenizer.batch_decode(out, skip_special_tokens=True), prompts)


@torch.inference_mode()
def pie_loop(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
             documents: Sequence[str], prompts: Sequence[Sequence[str]], *, max_new_tokens: int = ANSWER_TOKENS,
             truncation: bool = False) -> list[list[str]]:
    """PIE on the book's cached decoder loop, the one PID runs on: answers per document (chapter 3).

    One encoder input "Z_u : X" per prompt, as :func:`pie_generate`; each of the ``sum(U_i)`` rows
    then decodes greedily from the start token alone, against its own encoding, with
    :func:`pidutils.t5.greedy` instead of Hugging Face's ``generate``.
    """
    check_t5(model)
    check_request(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens)
    enc = pie_inputs(tokenizer, documents, prompts, truncation=truncation, device=model.device)
    memory = encoded_memory(model, enc["input_ids"], enc["attention_mask"])
    start = start_tokens(model, enc["input_ids"].shape[0])
    tokens, _ = greedy(model, memory, start, torch.ones_like(start, dtype=torch.bool), max_new_tokens=max_new_tokens,
                       pad=tokenizer.pad_token_id)
    return per_document(tokenizer.batch_decode(tokens, skip_special_tokens=True), prompts)


def pie_batches(split, tokenizer: PreTrainedTokenizerFast, *, batch_size: int = 8,
                curriculum: int = 0) -> Callable[[random.Random], dict]:
    """Training batches for PIE: (dialogue, slot) pairs of similar length, some slots drawn from the set ones.

    Every ``SET_SLOT_EVERY``-th pair of a batch asks a slot whose answer is a value; the others ask a
    slot drawn uniformly, so about 43% of the answers are values against 24% in the data. Uniform draws
    alone learned to copy values slowly, and one set slot in two taught the model to answer values for
    "none" slots (chapter 2).

    Returns ``next_batch(rng) -> dict`` for :func:`pidutils.train.train`; the labels are the answer
    tokens and ``</s>``, padding masked with -100.
    """
    check_int("batch_size", batch_size, 2)
    dialogues, slots, values = split["dialogue"], split["slots"], split["values"]
    draw = word_buckets(dialogues, batch_size=batch_size, curriculum=curriculum)

    def next_batch(rng: random.Random) -> dict:
        sources, targets = [], []
        for k, i in enumerate(draw(rng)):
            set_slots = [j for j, v in enumerate(values[i]) if v != "none"]
            j = rng.choice(set_slots) if (k % SET_SLOT_EVERY == 0 and set_slots) else rng.randrange(len(slots[i]))
            sources.append(pie_source(slots[i][j], dialogues[i]))
            targets.append(values[i][j])
        return seq2seq_batch(tokenizer, sources, targets)

    return next_batch
