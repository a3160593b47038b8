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
own: the request's checks, the loop over steps, the reference and the training loss. The prompts as
decoder prefixes (:func:`pidutils.t5.decoder_prefixes`) and the training batches
(:func:`pidutils.batching.pid_batches`) are in the engine too, since chapter 8's compressed memory
is decoded and trained the same way; they are re-exported here.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from .batching import pid_batches, prompt_ids, split_answers, tokenize_checked  # noqa: F401 (re-exported)
from .checks import check_choice, check_int, check_prompts
from .t5 import bias_table, causal_bias, check_t5, decoder_forward, decoder_prefixes, encode, encoded_memory, greedy
from .tokenizer import check_vocab

ANSWER_TOKENS = 8  # new tokens per answer: every slot value of the dialogue set fits


# --- Step 1: the prompts as decoder prefixes --------------------------------------------------
# "<start> Z_u :", left-padded (t5.decoder_prefixes): shared with chapter 8's compressed memory; the
# token ids of "Z_u :" are pidutils.batching.prompt_ids, shared with chapter 7's questions too.


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

def pid_loss(model: T5ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """Cross-entropy on the answer tokens; one encoding per dialogue receives every prompt's gradient."""
    memory = encoded_memory(model, batch["input_ids"], batch["attention_mask"])
    ids = batch["decoder_input_ids"]
    valid = torch.ones_like(ids, dtype=torch.bool)  # right padding: the causal mask hides it
    logits = decoder_forward(model, ids, memory, causal_bias(bias_table(model), 0, ids.shape[1], valid))
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)
