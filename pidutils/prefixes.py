"""Chapter 7's measurements: the three ways of decoding U questions of one document with a
decoder-only model, timed side by side, with the KV bytes they hold and the cost model beside them.

:func:`prefix_row` is one point of the chapter's U slider and one row of ``python -m pidutils.bench
shared-prefix``: the same requests answered each way, checked to agree, then timed interleaved end
to end (tokenising, prefill, decoding) and in the decoding phase alone (after the document's
prefill and the cached way's copies: the question pass and the answer steps).
"""
from __future__ import annotations

import itertools
from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerFast

from .bench import compare, peak_memory, speedup
from .causal import head_dim
from .checks import check_choice, check_int
from .cost import StepBytes, prefix_kv_held, prefix_step_cost
from .data import SLOTS
from .models import count_parameters
from .shared_prefix import ANSWER_TOKENS, WAYS, decode_prepared, decode_request, make_request, prepare


def questions_for(U: int) -> list[str]:
    """U questions: the 30 slots in order, cycled when U is larger (a timing needs only their shape)."""
    check_int("U", U, 1)
    return list(itertools.islice(itertools.cycle(SLOTS), U))


def model_shape(model: PreTrainedModel) -> dict[str, int]:
    """The shape entries :mod:`pidutils.cost` needs for chapter 7's formulas."""
    config = model.config
    return {"params": count_parameters(model), "layers": config.num_hidden_layers,
            "heads": config.num_attention_heads, "kv_heads": config.num_key_value_heads, "head_dim": head_dim(model)}


def predicted_step(way: str, model: PreTrainedModel, *, U: int, b: int, n_prefix: int, n_suffix: int) -> StepBytes:
    """The cost model's bytes of one decode step, for this model in its dtype."""
    return prefix_step_cost(way, U=U, b=b, n_prefix=n_prefix, n_suffix=n_suffix,
                            bytes_per_element=model.dtype.itemsize, **model_shape(model))


@torch.inference_mode()
def prefix_row(model: PreTrainedModel, tokenizer: PreTrainedTokenizerFast, documents: Sequence[str], U: int, *,
               ways: Sequence[str] = WAYS, repeats: int = 3, max_new_tokens: int = ANSWER_TOKENS) -> dict:
    """One point: ``b = len(documents)`` documents, U questions each, each of ``ways`` (the cached
    and shared ways always; the repeated one, whose prefill is U times the others', when asked).

    The row holds ``b``, ``U``, ``n_prefix`` (the documents' mean length in tokens); per way
    ``<way>_s`` (median seconds end to end), ``<way>_decoding_s`` (the decoding phase, cached and
    shared), the KV bytes held at the end, measured from the tensors (``<way>_kv_bytes``), and the
    peak bytes allocated end to end (``<way>_peak_bytes``); for the cached and shared ways, the
    bytes of the prefix's KV, measured (``<way>_prefix_kv_bytes``) and predicted by
    :func:`pidutils.cost.prefix_kv_held` (``<way>_prefix_kv_predicted``); the
    speed-ups of the shared way end to end over ``repeated`` (when timed) and ``cached``, and in the decoding
    phase over ``cached``, beside the cost model's ratio of bytes a step reads
    (``predicted_step_ratio``, cached over shared, mid-answer).
    """
    for way in ways:
        check_choice("ways", way, WAYS)
    ways = [way for way in WAYS if way in ways or way != "repeated"]
    questions = questions_for(U)
    request = make_request(model, tokenizer, documents, questions)
    pad, device = tokenizer.pad_token_id, model.device
    prepared = {way: prepare(model, request, way=way, max_new_tokens=max_new_tokens) for way in ways}
    starts = {way: p.cache.length for way, p in prepared.items()}
    answers = {way: decode_prepared(model, p, max_new_tokens=max_new_tokens, pad=pad) for way, p in prepared.items()}
    if not all(torch.equal(answers[way], answers["shared"]) for way in ways):
        raise AssertionError("the ways disagree")

    def whole(way: str):
        return lambda: decode_request(model, make_request(model, tokenizer, documents, questions), way=way,
                                      max_new_tokens=max_new_tokens, pad=pad)

    def decoding(way: str):
        def run():
            prepared[way].cache.length = starts[way]
            return decode_prepared(model, prepared[way], max_new_tokens=max_new_tokens, pad=pad)
        return run

    e2e = compare({way: whole(way) for way in ways}, device, warmup=1, repeats=repeats)
    phase = compare({way: decoding(way) for way in ("cached", "shared")}, device, warmup=1, repeats=repeats)
    peaks = {way: peak_memory(whole(way), device) for way in ways}
    b, n_prefix, width = len(documents), int(request.prefix_valid.sum()) // len(documents), request.prefix.shape[1]
    n_suffix = request.questions.shape[1] + answers["shared"].shape[1]
    shape = model_shape(model)
    row = {"b": b, "U": U, "n_prefix": n_prefix}
    for way in ways:
        row |= {f"{way}_s": e2e[way].median, f"{way}_kv_bytes": prepared[way].kv_bytes(),
                f"{way}_peak_bytes": peaks[way]}
    for way, held in (("cached", prepared["cached"].cache), ("shared", prepared["shared"].prefix)):
        prefix = held.buffer[:, :, :, :, :width]
        row[f"{way}_prefix_kv_bytes"] = prefix.numel() * prefix.element_size()
        row[f"{way}_prefix_kv_predicted"] = prefix_kv_held(way, U=U, b=b, n_prefix=width, layers=shape["layers"],
                                                           kv_heads=shape["kv_heads"], head_dim=shape["head_dim"],
                                                           bytes_per_element=model.dtype.itemsize)
    row |= {f"{way}_decoding_s": phase[way].median for way in ("cached", "shared")}
    if "repeated" in ways:
        row["speedup_vs_repeated"] = speedup(e2e["repeated"], e2e["shared"])
    row |= {"speedup_vs_cached": speedup(e2e["cached"], e2e["shared"]),
            "decoding_speedup_vs_cached": speedup(phase["cached"], phase["shared"])}
    mid = {way: predicted_step(way, model, U=U, b=b, n_prefix=n_prefix, n_suffix=n_suffix // 2)
           for way in ("cached", "shared")}
    row["predicted_step_ratio"] = mid["cached"].total / mid["shared"].total
    return row
