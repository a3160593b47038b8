"""Tokenising, padding and batching: the part of the engine before the model (chapters 2 to 5).

Every method turns texts into padded tensors on the model's device (:func:`tokenize_checked`),
pads its own token rows to one width (:func:`pad_rows`), and trains on batches of dialogues of
similar length (:func:`length_buckets`); the plain sequence-to-sequence batch of PIE and of the
sequential decoder is :func:`seq2seq_batch`.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
from transformers import PreTrainedTokenizerFast

from .checks import check_int, check_prompt_lists
from .data import pid_prefix


def tokenize_checked(tokenizer: PreTrainedTokenizerFast, texts: list[str], *, what: str, truncation: bool,
                     device: torch.device) -> dict[str, torch.Tensor]:
    """Tokenize with padding, onto ``device``; a text longer than the model's limit is a
    ``ValueError`` naming ``what`` unless ``truncation`` is asked for (chapter 2)."""
    limit = tokenizer.model_max_length
    if not truncation:
        lengths = [len(ids) for ids in tokenizer(texts)["input_ids"]]
        if max(lengths) > limit:
            raise ValueError(f"{what} must be at most {limit} tokens (the model's limit) unless "
                             f"truncation=True; the longest is {max(lengths)}")
    enc = tokenizer(texts, padding=True, return_tensors="pt",
                    **({"truncation": True, "max_length": limit} if truncation else {}))
    return {k: v.to(device) for k, v in enc.items()}


def pad_rows(rows: Sequence[Sequence], value: object, *, left: bool = False) -> list[list]:
    """Rows of different lengths padded with ``value`` to the longest: on the right, or on the left
    (``left=True``, so that every row's next token lands in the same column; chapter 3)."""
    width = max(len(r) for r in rows)
    return [[value] * (width - len(r)) + list(r) if left else list(r) + [value] * (width - len(r)) for r in rows]


def length_buckets(lengths: Sequence[int], *, batch_size: int,
                   curriculum: int = 0) -> Callable[[random.Random], list[int]]:
    """``draw(rng)`` -> ``batch_size`` indices of items of similar length (a random window of the sorted order).

    Batches of similar length waste little compute on padding. With ``curriculum`` > 0, the first
    draws come from the shortest quarter of the items, and the range grows linearly to all of them
    over ``curriculum`` draws (sequence-length warm-up: short dialogues first). Chapter 2.
    """
    check_int("batch_size", batch_size, 1)
    check_int("curriculum", curriculum, 0)
    order = sorted(range(len(lengths)), key=lambda i: lengths[i])
    window = min(len(order), 4 * batch_size)
    draws = 0

    def draw(rng: random.Random) -> list[int]:
        nonlocal draws
        share = 1.0 if draws >= curriculum else 0.25 + 0.75 * draws / curriculum
        draws += 1
        span = max(window, round(share * len(order)))
        start = rng.randrange(span - window + 1)
        return rng.sample(order[start:start + window], min(batch_size, window))

    return draw


def word_buckets(texts: Sequence[str], *, batch_size: int, curriculum: int = 0) -> Callable[[random.Random], list[int]]:
    """:func:`length_buckets` over the texts' lengths in words: every training set of the book."""
    return length_buckets([len(t.split()) for t in texts], batch_size=batch_size, curriculum=curriculum)


def seq2seq_batch(tokenizer: PreTrainedTokenizerFast, sources: list[str], targets: list[str]) -> dict:
    """Encoder inputs and ``labels`` (target tokens and ``</s>``, padding -100) for the model's own loss."""
    enc = tokenizer(sources, padding=True, truncation=True, return_tensors="pt")
    labels = tokenizer(targets, padding=True, return_tensors="pt")["input_ids"]
    labels[labels == tokenizer.pad_token_id] = -100
    return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"], "labels": labels}


def prompt_ids(tokenizer: PreTrainedTokenizerFast, prompt: str) -> list[int]:
    """The token ids of ``"Z_u :"`` without ``</s>``: PID's decoder prefix after the start token
    (chapter 3), and a decoder-only model's question after the document (chapter 7)."""
    return tokenizer(pid_prefix(prompt), add_special_tokens=False)["input_ids"]


def split_answers(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor,
                  prompts: Sequence[Sequence[str]]) -> list[list[str]]:
    """Decode (b*U, steps) ids into each document's answers, dropping the padding prompts."""
    check_prompt_lists(prompts)
    texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    U = len(texts) // len(prompts)
    return [texts[i * U:i * U + len(ps)] for i, ps in enumerate(prompts)]


def pid_batches(split, tokenizer: PreTrainedTokenizerFast, model: T5ForConditionalGeneration, *, batch_size: int = 8,
                curriculum: int = 0) -> Callable[[random.Random], dict]:
    """Training batches for PID: dialogues of similar length, each with all its slots as prompts.

    Each decoder row is ``<start> Z_u : Y_u </s>``, right-padded; ``labels`` holds the next token
    on the answer and ``</s>`` positions and -100 elsewhere (prompt and padding), so the loss is on
    the answers only. Returns ``next_batch(rng) -> dict`` for :func:`pidutils.train.train` with
    :func:`pid_loss`.
    """
    check_int("batch_size", batch_size, 1)
    dialogues, slots, values = split["dialogue"], split["slots"], split["values"]
    draw = word_buckets(dialogues, batch_size=batch_size, curriculum=curriculum)
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
        ids, labels = torch.tensor(pad_rows(rows, pad)), torch.tensor(pad_rows(targets, -100))
        enc = tokenizer([dialogues[i] for i in picked], padding=True, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "decoder_input_ids": ids, "labels": labels}

    return next_batch
