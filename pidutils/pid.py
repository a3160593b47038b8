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

The decoder pass is written out once, with the model's own weights, in :mod:`pidutils.t5`, which
the pipelined and speculative decoders of chapters 4 and 5 share; this module adds what is PID's
own: the prompts as decoder prefixes, the loop over steps, and the training batches.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from .batching import pad_rows, prompt_ids, tokenize_checked, word_buckets
from .checks import check_choice, check_int, check_prompt_lists, check_prompts
from .t5 import bias_table, causal_bias, check_t5, decoder_forward, encode, encoded_memory, greedy
from .tokenizer import check_vocab

ANSWER_TOKENS = 8  # new tokens per answer: every slot value of the dialogue set fits


# --- Step 1: the prompts as decoder prefixes --------------------------------------------------
# The token ids of "Z_u :" are pidutils.batching.prompt_ids, shared with chapter 7's questions.

def decoder_prefixes(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                     prompts: Sequence[Sequence[str]], *, truncation: bool = False):
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
    ids = torch.tensor(pad_rows(rows, tokenizer.pad_token_id, left=True), device=model.device)
    mask = torch.tensor(pad_rows([[True] * len(r) for r in rows], False, left=True), device=model.device)
    return ids, mask, U


# --- Steps 2 and 3: encode once, and decode with folded cross-attention ----------------------------
# The encoder, the shared cross-attention memory (t5.cross_memory), the folded queries (t5.fold)
# and the decoder pass (t5.decoder_forward) live in pidutils.t5, which every method shares.


# --- Step 4: greedy decoding of all U answers in parallel ---------------------------------------

def check_request(model, tokenizer, documents, prompts, *, max_new_tokens: int, cross: str) -> None:
    """Every ``ValueError`` PID raises, before any work."""
    check_t5(model)
    check_prompts(documents, prompts)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_choice("cross", cross, ["shared", "copy"])
    check_vocab(tokenizer, model)


@torch.inference_mode()
def pid_generate_ids(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                     documents: Sequence[str], prompts: Sequence[Sequence[str]], *,
                     max_new_tokens: int = ANSWER_TOKENS, cross: str = "shared", truncation: bool = False,
                     return_scores: bool = False):
    """Greedy PID decoding; returns the new token ids (b*U, steps), and per-step logits if asked.

    The encoder runs once per document; every row stops at its own ``</s>`` (later positions hold
    padding), and the loop ends when all rows have stopped or after ``max_new_tokens`` steps.
    """
    check_request(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens, cross=cross)
    enc = tokenize_checked(tokenizer, list(documents), what="each document", truncation=truncation,
                           device=model.device)
    ids, valid, U = decoder_prefixes(model, tokenizer, prompts, truncation=truncation)
    memory = encoded_memory(model, enc["input_ids"], enc["attention_mask"], copies=U if cross == "copy" else 1)
    tokens, scores = greedy(model, memory, ids, valid, max_new_tokens=max_new_tokens, pad=tokenizer.pad_token_id)
    return (tokens, scores) if return_scores else tokens


def split_answers(tokenizer: PreTrainedTokenizerFast, ids: torch.Tensor,
                  prompts: Sequence[Sequence[str]]) -> list[list[str]]:
    """Decode (b*U, steps) ids into each document's answers, dropping the padding prompts."""
    check_prompt_lists(prompts)
    texts = [t.strip() for t in tokenizer.batch_decode(ids, skip_special_tokens=True)]
    U = len(texts) // len(prompts)
    return [texts[i * U:i * U + len(ps)] for i, ps in enumerate(prompts)]


def pid_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                 documents: Sequence[str], prompts: Sequence[Sequence[str]], *, max_new_tokens: int = ANSWER_TOKENS,
                 cross: str = "shared", truncation: bool = False) -> list[list[str]]:
    """Answer every prompt of every document, PID-style; returns the answers per document."""
    ids = pid_generate_ids(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens, cross=cross,
                           truncation=truncation)
    return split_answers(tokenizer, ids, prompts)


# --- The reference: Hugging Face generate on copied encoder states -------------------------------

@torch.inference_mode()
def pid_reference(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                  documents: Sequence[str], prompts: Sequence[Sequence[str]], *, max_new_tokens: int = ANSWER_TOKENS):
    """PID by Hugging Face's own path: encoder states repeated U times, then ``model.generate``.

    Returns ``(ids, scores)`` like :func:`pid_generate_ids` with ``return_scores=True``.
    """
    check_request(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens, cross="copy")
    enc = tokenize_checked(tokenizer, list(documents), what="each document", truncation=False, device=model.device)
    ids, valid, U = decoder_prefixes(model, tokenizer, prompts)
    encoded = encode(model, enc["input_ids"], enc["attention_mask"]).repeat_interleave(U, dim=0)
    out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=encoded),
                         attention_mask=enc["attention_mask"].repeat_interleave(U, dim=0),
                         decoder_input_ids=ids, decoder_attention_mask=valid.long(),
                         max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         output_logits=True, return_dict_in_generate=True, pad_token_id=tokenizer.pad_token_id)
    return out.sequences[:, ids.shape[1]:], torch.stack(out.logits, dim=1)


# --- Training: the encoder once per dialogue, the loss on the answers only ----------------------

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


def pid_loss(model: T5ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """Cross-entropy on the answer tokens; one encoding per dialogue receives every prompt's gradient."""
    memory = encoded_memory(model, batch["input_ids"], batch["attention_mask"])
    ids = batch["decoder_input_ids"]
    valid = torch.ones_like(ids, dtype=torch.bool)  # right padding: the causal mask hides it
    logits = decoder_forward(model, ids, memory, causal_bias(bias_table(model), 0, ids.shape[1], valid))
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
