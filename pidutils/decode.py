"""Greedy decoding of a Hugging Face T5, with and without the KV cache (chapter 1).

The steps are named after what they do, as in gpt-fast: :func:`prefill` runs the encoder and the
first decoder step, :func:`decode_one_token` extends every sequence by one token reusing the
cache, :func:`decode_n_tokens` loops it. :func:`greedy_uncached` is the obviously correct reference:
at every step it runs the decoder over the whole prefix again.
"""
from __future__ import annotations

import functools
import inspect

import torch
from transformers import EncoderDecoderCache, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from .checks import check_int
from .t5 import start_tokens


def _check_inputs(input_ids: torch.Tensor, new_tokens: int) -> None:
    if input_ids.dim() != 2 or input_ids.shape[0] < 1 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must have shape (batch >= 1, length >= 1), got {tuple(input_ids.shape)}")
    check_int("new_tokens", new_tokens, 1)


def cache_argument(model: T5ForConditionalGeneration) -> str:
    """The keyword under which ``model``'s forward takes a KV cache: ``cache`` from transformers 5.24
    on, where ``past_key_values`` is deprecated, and ``past_key_values`` before (Colab's 5.15).
    Read once per model class, not at every decode step."""
    return _cache_keyword(type(model))


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def returned_cache(out) -> EncoderDecoderCache:
    """The KV cache in a model's output, under either name (:func:`cache_argument`)."""
    return out["cache"] if "cache" in out else out["past_key_values"]


@torch.inference_mode()
def prefill(model: T5ForConditionalGeneration, input_ids: torch.Tensor,
            attention_mask: torch.Tensor | None = None):
    """Encode the source once and run the first decoder step, filling the KV cache.

    Returns ``(next_token, cache, encoder_outputs)``; ``next_token`` has shape ``(batch, 1)``.
    """
    encoder_outputs = BaseModelOutput(model.get_encoder()(input_ids=input_ids,
                                                          attention_mask=attention_mask).last_hidden_state)
    out = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                decoder_input_ids=start_tokens(model, input_ids.shape[0]), use_cache=True)
    return out.logits[:, -1:].argmax(-1), returned_cache(out), encoder_outputs


@torch.inference_mode()
def decode_one_token(model: T5ForConditionalGeneration, token: torch.Tensor, cache: EncoderDecoderCache,
                     encoder_outputs: BaseModelOutput, attention_mask: torch.Tensor | None = None):
    """Feed one token per sequence; the self- and cross-attention K/V come from ``cache``."""
    out = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                decoder_input_ids=token, use_cache=True, **{cache_argument(model): cache})
    return out.logits[:, -1:].argmax(-1), returned_cache(out)


def decode_n_tokens(model: T5ForConditionalGeneration, input_ids: torch.Tensor, new_tokens: int,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy decoding with the KV cache: ``new_tokens`` tokens per sequence, shape ``(batch, new_tokens)``.

    No early stop at EOS, so that every timing covers exactly ``new_tokens`` steps.
    """
    _check_inputs(input_ids, new_tokens)
    token, cache, encoder_outputs = prefill(model, input_ids, attention_mask)
    tokens = [token]
    for _ in range(new_tokens - 1):
        token, cache = decode_one_token(model, token, cache, encoder_outputs, attention_mask)
        tokens.append(token)
    return torch.cat(tokens, dim=1)


@torch.inference_mode()
def greedy_uncached(model: T5ForConditionalGeneration, input_ids: torch.Tensor, new_tokens: int,
                    attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """The reference: every step reruns the decoder over the whole prefix (the encoder output is reused)."""
    _check_inputs(input_ids, new_tokens)
    encoder_outputs = BaseModelOutput(model.get_encoder()(input_ids=input_ids,
                                                          attention_mask=attention_mask).last_hidden_state)
    prefix = start_tokens(model, input_ids.shape[0])
    for _ in range(new_tokens):
        logits = model(encoder_outputs=encoder_outputs, attention_mask=attention_mask,
                       decoder_input_ids=prefix, use_cache=False).logits
        prefix = torch.cat([prefix, logits[:, -1:].argmax(-1)], dim=1)
    return prefix[:, 1:]
