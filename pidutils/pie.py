"""Prompt-in-encoder (PIE) decoding: the document is encoded once per prompt (chapter 2).

For U prompts Z_1..Z_U over one document X, PIE builds U encoder inputs "Z_u : X" and generates the
U answers Y_u in one batch with ``model.generate`` (greedy, with the KV cache). It is the baseline
that PID (chapter 3) beats.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .checks import check_documents, check_int, check_prompt_lists
from .data import pie_source
from .tokenizer import check_vocab


def check_prompts(documents: Sequence[str], prompts: Sequence[Sequence[str]]) -> None:
    """Raise ``ValueError`` unless ``documents`` is a list of strings and ``prompts`` a list of
    lists of strings, one list (U >= 1) per document, with no empty text."""
    check_documents(documents)
    check_prompt_lists(prompts)
    if len(prompts) != len(documents):
        raise ValueError(f"documents and prompts must have the same batch size, got {len(documents)} "
                         f"documents and {len(prompts)} prompt lists")


def tokenize_checked(tokenizer: PreTrainedTokenizerFast, texts: list[str], what: str,
                     truncation: bool, device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize with padding; a text longer than the model's limit is an error unless truncation is asked for."""
    limit = tokenizer.model_max_length
    if not truncation:
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        if max(lengths) > limit:
            raise ValueError(f"{what} must be at most {limit} tokens (the model's limit) unless "
                             f"truncation=True; the longest is {max(lengths)}")
    enc = tokenizer(texts, padding=True, return_tensors="pt",
                    **({"truncation": True, "max_length": limit} if truncation else {}))
    return {k: v.to(device) for k, v in enc.items()}


@torch.inference_mode()
def pie_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                 documents: Sequence[str], prompts: Sequence[Sequence[str]], max_new_tokens: int = 8,
                 truncation: bool = False) -> list[list[str]]:
    """Answer every prompt of every document, PIE-style: one encoder input "Z_u : X" per prompt.

    All ``sum(U_i)`` sequences are encoded and decoded as one batch. Returns the answers per document.
    """
    check_prompts(documents, prompts)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_vocab(tokenizer, model)
    sources = [pie_source(p, doc) for doc, ps in zip(documents, prompts) for p in ps]
    enc = tokenize_checked(tokenizer, sources, "each prompt + document", truncation, model.device)
    out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    answers = tokenizer.batch_decode(out, skip_special_tokens=True)
    result, start = [], 0
    for ps in prompts:
        result.append([a.strip() for a in answers[start:start + len(ps)]])
        start += len(ps)
    return result


def length_buckets(lengths: Sequence[int], batch_size: int, curriculum: int = 0):
    """``draw(rng)`` -> ``batch_size`` indices of items of similar length (a random window of the sorted order).

    Batches of similar length waste little compute on padding. With ``curriculum`` > 0, the first
    draws come from the shortest quarter of the items, and the range grows linearly to all of them
    over ``curriculum`` draws (sequence-length warm-up: short dialogues first). Chapter 2.
    """
    check_int("curriculum", curriculum, 0)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    window = min(len(order), 4 * batch_size)
    draws = 0

    def draw(rng) -> list[int]:
        nonlocal draws
        share = 1.0 if draws >= curriculum else 0.25 + 0.75 * draws / curriculum
        draws += 1
        span = max(window, round(share * len(order)))
        start = rng.randrange(span - window + 1)
        return rng.sample(order[start:start + window], min(batch_size, window))

    return draw


SET_SLOT_EVERY = 4  # one pair in four asks a slot that is set; see pie_batches


def pie_batches(split, tokenizer: PreTrainedTokenizerFast, batch_size: int = 8, curriculum: int = 0):
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
    draw = length_buckets([len(d.split()) for d in dialogues], batch_size, curriculum)

    def next_batch(rng) -> dict:
        sources, targets = [], []
        for k, i in enumerate(draw(rng)):
            set_slots = [j for j, v in enumerate(values[i]) if v != "none"]
            j = rng.choice(set_slots) if (k % SET_SLOT_EVERY == 0 and set_slots) else rng.randrange(len(slots[i]))
            sources.append(pie_source(slots[i][j], dialogues[i]))
            targets.append(values[i][j])
        return seq2seq_batch(tokenizer, sources, targets)

    return next_batch


def seq2seq_batch(tokenizer: PreTrainedTokenizerFast, sources: list[str], targets: list[str]) -> dict:
    """Encoder inputs and ``labels`` (target tokens and ``</s>``, padding -100) for the model's own loss."""
    enc = tokenizer(sources, padding=True, truncation=True, return_tensors="pt")
    labels = tokenizer(targets, padding=True, return_tensors="pt")["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}
