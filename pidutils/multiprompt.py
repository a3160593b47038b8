"""PIE and PID on the same documents: what each costs, predicted and measured (chapters 2 and 3).

One place builds the workload (b test dialogues, the first U slots as prompts), runs a method on it
(:func:`answer_fn`), predicts its time on a roofline from this model's shapes (:func:`predicted_work`)
and measures it (:func:`latency`). Chapter 2 uses it for PIE alone, chapter 3 and
``python -m pidutils.bench pid`` for PIE, PID-copy and PID-shared side by side; chapter 3's rows,
PID-shared's speed-ups and its FLOPs against PIE's, are :func:`timing_row` and :func:`flops_row`.

The three :data:`LOOP_METHODS` run on the same machinery, the book's cached decoder loop
(:func:`pidutils.t5.greedy`), so that they differ only in what the method changes: PIE
(:func:`pidutils.pie.pie_loop`) encodes "Z_u : X" once per prompt and decodes from the start token; PID encodes X
once and decodes after "Z_u :", with the encoder's K/V copied U times or shared. :data:`REFERENCE`,
PIE through Hugging Face's ``generate`` (:func:`pidutils.pie.pie_generate`), is the outside
reference: the same answers, with the framework's own per-step overhead.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .bench import Timing, speedup, time_fn
from .checks import check_choice, check_int, check_prompts
from .cost import Device, Work, forward_work
from .data import SLOTS, pie_source
from .models import count_parameters, weights_per_decode_step
from .pid import ANSWER_TOKENS, pid_generate, prompt_ids
from .pie import pie_generate, pie_loop

LOOP_METHODS = ("PIE", "PID-copy", "PID-shared")  # all three on the book's cached decoder loop
REFERENCE = "PIE-generate"  # PIE through Hugging Face's generate: the outside reference
EVERY_METHOD = LOOP_METHODS + (REFERENCE,)


def workload(split, b: int, U: int) -> tuple[list[str], list[list[str]]]:
    """The first ``b`` dialogues of ``split``, each asked the first ``U`` of the 30 slots."""
    check_int("b", b, 1, len(split))
    check_int("U", U, 1, len(SLOTS))
    return list(split["dialogue"][:b]), [SLOTS[:U]] * b


def answer_fn(method: str, model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
              documents: Sequence[str], prompts: Sequence[Sequence[str]], *,
              max_new_tokens: int = ANSWER_TOKENS) -> Callable[[], list[list[str]]]:
    """A no-argument function answering every prompt with ``method`` (one of :data:`EVERY_METHOD`)."""
    check_choice("method", method, EVERY_METHOD)
    check_prompts(documents, prompts)
    if method == "PIE":
        return lambda: pie_loop(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens)
    if method == REFERENCE:
        return lambda: pie_generate(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens)
    cross = "copy" if method == "PID-copy" else "shared"
    return lambda: pid_generate(model, tokenizer, documents, prompts, max_new_tokens=max_new_tokens, cross=cross)


def _cross_kv(model: T5ForConditionalGeneration, rows: int, n: int, queries: int) -> Work:
    """Reading the cross-attention K/V of ``rows`` encodings of ``n`` tokens, for ``queries`` query rows."""
    layers, inner = model.config.num_decoder_layers, model.config.num_heads * model.config.d_kv
    return Work(flops=4.0 * layers * inner * queries * n,
                bytes=2.0 * layers * inner * rows * n * model.dtype.itemsize)


def _plus(*works: Work) -> Work:
    return Work(flops=sum(w.flops for w in works), bytes=sum(w.bytes for w in works))


def predicted_work(method: str, model: T5ForConditionalGeneration, b: int, U: int, n_s: int, n_p: int,
                   n_t: int) -> list[Work]:
    """FLOPs and bytes of every forward pass of ``method``: the encoder, then each decoder pass.

    PIE encodes ``b*U`` inputs of ``n_s + n_p`` tokens and each decoder step reads ``b*U`` encodings;
    PID encodes ``b`` documents of ``n_s`` tokens, feeds the ``n_p`` prompt tokens to the decoder in
    its first pass, and each step reads ``b`` encodings (shared) or ``b*U`` (copy). The cross-attention
    K/V projections are counted where they are made. This is the PID paper's Table 1 with this model's
    real parameter counts and byte sizes instead of Shazeer's constant-free element counts.
    :data:`REFERENCE` does PIE's work.
    """
    check_choice("method", method, EVERY_METHOD)
    for name, value, low in (("b", b, 1), ("U", U, 1), ("n_s", n_s, 1), ("n_p", n_p, 0), ("n_t", n_t, 1)):
        check_int(name, value, low)
    cfg, size = model.config, model.dtype.itemsize
    enc_params = count_parameters(model.get_encoder().block)
    dec_params = weights_per_decode_step(model)
    inner = cfg.num_heads * cfg.d_kv
    pie = method in ("PIE", REFERENCE)
    enc_rows, enc_len = (b * U, n_s + n_p) if pie else (b, n_s)
    kv_rows = b if method == "PID-shared" else b * U
    kv_made = kv_rows * enc_len  # encoder tokens projected to cross-attention K/V
    encoder = _plus(forward_work(enc_params, enc_rows, enc_len, enc_len, cfg.d_model, cfg.num_layers, size),
                    Work(flops=2.0 * 2 * cfg.num_decoder_layers * cfg.d_model * inner * kv_made,
                         bytes=2.0 * cfg.num_decoder_layers * inner * kv_made * size))
    first = 1 if pie else n_p + 1
    passes = [encoder]
    for t in range(n_t):
        new, context = (first, first) if t == 0 else (1, first + t)
        passes.append(_plus(forward_work(dec_params, b * U, new, context, cfg.d_model, cfg.num_decoder_layers, size),
                            _cross_kv(model, kv_rows, enc_len, b * U * new)))
    return passes


def predicted_seconds(passes: Sequence[Work], roof: Device) -> float:
    """The roofline's lower bound on the time of these passes on ``roof``."""
    return sum(w.roofline_seconds(roof) for w in passes)


def shape_of(tokenizer: PreTrainedTokenizerFast, documents: Sequence[str], prompts: Sequence[Sequence[str]],
             answers: Sequence[Sequence[str]]) -> dict[str, int]:
    """n_s, n_p and n_t of a workload as tokenized: the longest document, prompt and answer (+ ``</s>``)."""
    check_prompts(documents, prompts)
    return {"n_s": max(len(tokenizer(d)["input_ids"]) for d in documents),
            "n_p": max(len(prompt_ids(tokenizer, p)) for ps in prompts for p in ps),
            "n_t": max(len(tokenizer(a)["input_ids"]) for row in answers for a in row)}


def encoder_tokens(method: str, tokenizer: PreTrainedTokenizerFast, documents: Sequence[str],
                   prompts: Sequence[Sequence[str]]) -> int:
    """Tokens the encoder actually processes (without padding): U (n_s + n_p) per document for PIE."""
    check_choice("method", method, EVERY_METHOD)
    check_prompts(documents, prompts)
    if method in ("PIE", REFERENCE):
        return sum(len(tokenizer(pie_source(p, d))["input_ids"]) for d, ps in zip(documents, prompts) for p in ps)
    return sum(len(tokenizer(d)["input_ids"]) for d in documents)


def latency(method: str, model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, split,
            roof: Device, U: int, b: int = 1, repeats: int = 3) -> tuple[float, float]:
    """Measured (median) and roofline-predicted seconds for ``method`` on ``b`` dialogues and U prompts."""
    documents, prompts = workload(split, b, U)
    run = answer_fn(method, model, tokenizer, documents, prompts)
    shape = shape_of(tokenizer, documents, prompts, run())
    measured = time_fn(run, model.device, warmup=0, repeats=repeats).median
    return measured, predicted_seconds(predicted_work(method, model, b, U, **shape), roof)


SPEEDUPS = {"PIE": "speedup_vs_pie", "PID-copy": "speedup_vs_copy", REFERENCE: "speedup_vs_generate"}


def timing_row(t: Mapping[str, Timing], *, b: int, U: int) -> dict:
    """One row of chapter 3's single-and-batched comparison, from the methods' timings ``t`` (name ->
    :class:`pidutils.bench.Timing`, as :func:`pidutils.experiments.time_methods` returns them): ``b``,
    ``U``, each method's median seconds (``"<method>_s"``) and PID-shared's speed-up over each other
    method timed (``"speedup_vs_pie"``, ``"speedup_vs_copy"``, ``"speedup_vs_generate"``, keys of the
    ``pid`` experiment's rows), as :func:`pidutils.bench.speedup` takes them."""
    row = {"b": b, "U": U, **{f"{m}_s": timing.median for m, timing in t.items()}}
    return row | {key: speedup(t[m], t["PID-shared"]) for m, key in SPEEDUPS.items() if m in t}


def flops_row(methods: Mapping[str, tuple], documents: Sequence[str], prompts: Sequence[Sequence[str]]) -> dict:
    """Each of the :data:`LOOP_METHODS`' predicted inference FLOPs on one workload (``methods``: name ->
    (model, tokenizer)), from :func:`predicted_work` at the shapes of its own answers (chapter 3):
    ``"<method>_flops"``, the encoder's share of PIE's (``"PIE_encoder_share"``) and ``"flops_ratio"``,
    PID-shared's over PIE's (the PID paper's Table 3 figure)."""
    b, U = len(documents), max(len(ps) for ps in prompts)
    passes = {}
    for m in LOOP_METHODS:
        model, tokenizer = methods[m]
        shape = shape_of(tokenizer, documents, prompts, answer_fn(m, model, tokenizer, documents, prompts)())
        passes[m] = predicted_work(m, model, b, U, **shape)
    flops = {m: sum(w.flops for w in works) for m, works in passes.items()}
    return {**{f"{m}_flops": f for m, f in flops.items()}, "PIE_encoder_share": passes["PIE"][0].flops / flops["PIE"],
            "flops_ratio": flops["PID-shared"] / flops["PIE"]}
