"""Chapter 8's measurements: what compressing a document to k vectors costs in answers, and what it
saves in bytes and time, with the cost model beside the timings.

:func:`quality_by_k` scores one compressor at several k (JGA, slot accuracy, and each slot's
accuracy, whence :func:`slots_lost`, the slots that fall first as k shrinks); :func:`memory_row` is
one point of the chapter's k slider and of ``python -m pidutils.bench compression``: PID over the
whole memory and over the compressed one, timed interleaved end to end and in the decoding phase,
with the memories' bytes measured from their tensors.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .batching import tokenize_checked
from .bench import compare, speedup
from .checks import check_float, check_int
from .compression import ANSWER_TOKENS, Compressor, check_compressor, compressed_generate, compressed_memory
from .cost import StepBytes, memory_held, memory_step_cost
from .data import SLOTS
from .metrics import evaluate, per_slot_accuracy
from .models import weights_per_decode_step
from .pid import pid_generate
from .t5 import CrossMemory, KVCache, bias_table, decode_loop, decoder_prefixes, encoded_memory


def memory_shape(model: T5ForConditionalGeneration) -> dict[str, int]:
    """The shape entries of :func:`pidutils.cost.memory_held` and :func:`pidutils.cost.memory_step_cost`."""
    config = model.config
    return {"layers": config.num_decoder_layers, "heads": config.num_heads, "head_dim": config.d_kv}


def predicted_step(model: T5ForConditionalGeneration, *, U: int, b: int, n_memory: int, n_self: int) -> StepBytes:
    """The cost model's bytes and operations of one decode step, for this model in its dtype."""
    return memory_step_cost(U=U, b=b, n_memory=n_memory, n_self=n_self, params=weights_per_decode_step(model),
                            bytes_per_element=model.dtype.itemsize, **memory_shape(model))


def quality_by_k(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, compressor: Compressor,
                 split, ks: Sequence[int]) -> list[dict]:
    """At each k: JGA, slot accuracy and every slot's accuracy (``slots``) on ``split``, answered by
    PID over the k-vector memory."""
    rows = []
    for k in ks:
        check_compressor(model, compressor, k)
        answers: list[list[str]] = []

        def predict(documents, prompts):
            found = compressed_generate(model, tokenizer, compressor, documents, prompts, k=k)
            answers.extend(found)
            return found

        scores = evaluate(predict, split)
        rows.append({"k": k, **scores, "slots": per_slot_accuracy(answers, split["values"], split["slots"])})
    return rows


def slots_lost(rows: Sequence[dict], *, threshold: float = 0.95) -> list[tuple[str, int]]:
    """Each slot whose accuracy falls below ``threshold`` somewhere in ``rows`` (one per k, from
    :func:`quality_by_k`), with the largest k at which it does, largest first: the slots lost first."""
    check_float("threshold", threshold, 0.0, 1.0)
    lost = {}
    for row in sorted(rows, key=lambda r: r["k"]):
        for slot, accuracy in row["slots"].items():
            if accuracy < threshold:
                lost[slot] = row["k"]
    return sorted(lost.items(), key=lambda item: (-item[1], SLOTS.index(item[0]) if item[0] in SLOTS else 0))


def answer_steps(model: T5ForConditionalGeneration, memory: CrossMemory, ids: torch.Tensor, valid: torch.Tensor, *,
                 steps: int) -> list[torch.Tensor]:
    """The decoding phase, a fixed ``steps`` tokens per row whatever they are: the prompts' pass and
    the answer steps over ``memory``, so two memories are timed over the same work."""
    cache = KVCache.empty(model, rows=ids.shape[0], capacity=ids.shape[1] + steps)
    return decode_loop(model, memory, cache, bias_table(model), ids, valid, steps=steps, stop_at_eos=False)[0]


@torch.inference_mode()
def memory_row(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, compressor: Compressor,
               documents: Sequence[str], *, U: int, k: int, repeats: int = 3, steps: int = ANSWER_TOKENS) -> dict:
    """One point: ``b = len(documents)`` documents, the first U slots of each as prompts, answered by
    PID over the whole memory (``pid``) and over k vectors (``compressed``).

    The row holds ``b``, ``U``, ``k``, ``n_s`` (the documents' mean length), the median seconds end to
    end (tokenising, encoding, compressing, decoding until every row ends: ``<way>_s``) and in the
    decoding phase (``steps`` tokens a row over a memory made beforehand: ``<way>_decoding_s``); the
    memories' bytes measured from their tensors (``<way>_memory_bytes``) beside
    :func:`pidutils.cost.memory_held` at the padded width (``<way>_memory_predicted``); the speed-ups
    of the compressed way; and the cost model's ratio of bytes a decode step reads
    (``predicted_step_ratio``, mid-answer, at the mean n_s).
    """
    check_int("U", U, 1, len(SLOTS))
    check_compressor(model, compressor, k)
    check_int("repeats", repeats, 1)
    prompts = [SLOTS[:U]] * len(documents)
    enc = tokenize_checked(tokenizer, list(documents), what="each document", truncation=False, device=model.device)
    ids, valid, _ = decoder_prefixes(model, tokenizer, prompts)
    memories = {"pid": encoded_memory(model, enc["input_ids"], enc["attention_mask"]),
                "compressed": compressed_memory(model, compressor, enc["input_ids"], enc["attention_mask"], k=k)}

    def whole(way: str):
        if way == "pid":
            return lambda: pid_generate(model, tokenizer, documents, prompts)
        return lambda: compressed_generate(model, tokenizer, compressor, documents, prompts, k=k)

    def decoding(way: str):
        return lambda: answer_steps(model, memories[way], ids, valid, steps=steps)

    ways = ("pid", "compressed")
    e2e = compare({way: whole(way) for way in ways}, model.device, warmup=1, repeats=repeats)
    phase = compare({way: decoding(way) for way in ways}, model.device, warmup=1, repeats=repeats)
    b, width = len(documents), enc["input_ids"].shape[1]
    n_s = int(enc["attention_mask"].sum()) // b
    row = {"b": b, "U": U, "k": k, "n_s": n_s}
    for way, n_memory in (("pid", width), ("compressed", k)):
        row |= {f"{way}_s": e2e[way].median, f"{way}_decoding_s": phase[way].median,
                f"{way}_memory_bytes": memories[way].nbytes(),
                f"{way}_memory_predicted": memory_held(b=b, n_memory=n_memory, bytes_per_element=model.dtype.itemsize,
                                                       **memory_shape(model))}
    n_self = ids.shape[1] + steps // 2
    predicted = {way: predicted_step(model, U=U, b=b, n_memory=n, n_self=n_self)
                 for way, n in (("pid", n_s), ("compressed", k))}
    row |= {"speedup": speedup(e2e["pid"], e2e["compressed"]),
            "decoding_speedup": speedup(phase["pid"], phase["compressed"]),
            "predicted_step_ratio": predicted["pid"].total / predicted["compressed"].total}
    return row
