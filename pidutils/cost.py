"""The papers' cost formulas as plain code: memory access, operations, intensity and the roofline.

This module knows nothing about torch or models; it is arithmetic on shapes, so every formula can
be tested against values worked by hand (``tests/test_cost.py``).

Notation (PID paper, Lu et al. 2024, Section 3, Table 1 and Appendix A): ``b`` documents in a
batch, ``U`` prompts per document, ``n_s`` document tokens, ``n_p`` prompt tokens, ``n_t`` generated
tokens, ``d`` model width. Table 1 has no ``n_p`` (Section 3.3 assumes the prompt terms negligible);
Appendix A writes the same costs with the prompts' ``n_p`` tokens (A.1 PIE's encoder
``U b (n_s + n_p)``, A.3 its cross-attention cache of ``n_s + n_p`` tokens). Counts follow Shazeer (2019), "Fast Transformer Decoding", the accounting the
PID paper's Table 1 uses: constant factors are dropped, memory access is counted in elements
(activations ``b n d``, key/value reads, weights ``d^2``) and operations in multiply-adds
(projections ``b n d^2``). Chapter 1 ("Why decoding is slow") explains the roofline, chapter 3 the
PIE/PID table.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from .checks import check_choice, check_float, check_int

TABLE1_METHODS = ("pie", "pid")  # the methods of the PID paper's Table 1
COMPONENTS = ("encoder_self_attention", "decoder_self_attention", "cross_attention")


@dataclass(frozen=True)
class Cost:
    """Memory access (elements) and arithmetic operations of one component."""

    memory: float
    ops: float

    def __add__(self, other: "Cost") -> "Cost":
        return Cost(memory=self.memory + other.memory, ops=self.ops + other.ops)

    @property
    def intensity(self) -> float:
        """Operational intensity: operations per element moved."""
        return self.ops / self.memory

    @property
    def inverse_intensity(self) -> float:
        """Memory access per operation, the quantity the PID paper's Table 1 and Appendix A compare."""
        return self.memory / self.ops


def _check_shapes(method: str, U: int, b: int, n_s: int, n_t: int, d: int, n_p: int) -> None:
    check_choice("method", method, TABLE1_METHODS)
    check_int("U", U, 1)
    check_int("b", b, 1)
    check_int("n_s", n_s, 1)
    check_int("n_t", n_t, 1)
    check_int("d", d, 1)
    check_int("n_p", n_p, 0)


def table1(U: int, b: int, n_s: int, n_t: int, d: int) -> dict[tuple[str, str], Cost]:
    """The PID paper's Table 1 exactly as printed: every (component, method) cell, term by term.

    The paper's prompts have no length here (it writes PIE's encoder input as ``n_s`` tokens), and
    decoder self-attention counts the cached keys/values and the weights but not the queries.
    """
    _check_shapes("pie", U, b, n_s, n_t, d, 0)
    return {
        ("encoder_self_attention", "pie"): Cost(memory=U * b * n_s * d + d**2, ops=U * b * n_s * d**2),
        ("encoder_self_attention", "pid"): Cost(memory=b * n_s * d + d**2, ops=b * n_s * d**2),
        ("decoder_self_attention", "pie"): Cost(memory=U * b * n_t**2 * d + n_t * d**2, ops=U * b * n_t * d**2),
        ("decoder_self_attention", "pid"): Cost(memory=U * b * n_t**2 * d + n_t * d**2, ops=U * b * n_t * d**2),
        ("cross_attention", "pie"): Cost(memory=U * b * n_s * n_t * d + U * b * n_t * d + n_t * d**2,
                                         ops=U * b * n_t * d**2),
        ("cross_attention", "pid"): Cost(memory=b * n_s * n_t * d + U * b * n_t * d + n_t * d**2,
                                         ops=U * b * n_t * d**2),
    }


def book_terms(U: int, b: int, n_s: int, n_t: int, d: int, n_p: int = 0) -> dict[tuple[str, str], Cost]:
    """What this book's accounting adds to each cell of :func:`table1` (chapter 3 says why).

    - Decoder self-attention reads each step's queries too: ``U b n_t d`` for both methods, a
      term of Shazeer's incremental attention that the printed table leaves out.
    - Prompts of ``n_p`` tokens: PIE encodes ``n_s + n_p`` tokens per prompt and its cross-attention
      reads them at every step (the paper's Appendix A.1 and A.3); PID's decoder cache holds the
      ``n_p`` prompt tokens.
    """
    _check_shapes("pie", U, b, n_s, n_t, d, n_p)
    queries = U * b * n_t * d
    none = Cost(memory=0, ops=0)
    return {
        ("encoder_self_attention", "pie"): Cost(memory=U * b * n_p * d, ops=U * b * n_p * d**2),
        ("encoder_self_attention", "pid"): none,
        ("decoder_self_attention", "pie"): Cost(memory=queries, ops=0),
        ("decoder_self_attention", "pid"): Cost(memory=queries + U * b * n_t * n_p * d, ops=0),
        ("cross_attention", "pie"): Cost(memory=U * b * n_p * n_t * d, ops=0),
        ("cross_attention", "pid"): none,
    }


def _component(component: str, method: str, U: int, b: int, n_s: int, n_t: int, d: int, n_p: int) -> Cost:
    """The book's cost of one cell: the printed Table 1 term plus :func:`book_terms`."""
    _check_shapes(method, U, b, n_s, n_t, d, n_p)
    cell = (component, method)
    return table1(U, b, n_s, n_t, d)[cell] + book_terms(U, b, n_s, n_t, d, n_p)[cell]


def encoder_self_attention(method: str, U: int, b: int, n_s: int, n_t: int, d: int,
                           n_p: int = 0) -> Cost:
    """One parallel encoder pass. PIE encodes ``b*U`` sequences of ``n_s + n_p`` tokens, PID ``b`` of ``n_s``.

    Memory ``rows * n * d + d^2``, operations ``rows * n * d^2`` (Shazeer's batched attention). With
    ``n_p = 0`` this is Table 1's cell; with prompts, PIE's is Appendix A.1's
    ``U b (n_s + n_p) d + d^2`` and ``U b (n_s + n_p) d^2`` (chapter 2).
    """
    return _component("encoder_self_attention", method, U, b, n_s, n_t, d, n_p)


def decoder_self_attention(method: str, U: int, b: int, n_s: int, n_t: int, d: int,
                           n_p: int = 0) -> Cost:
    """``n_t`` incremental decoder steps over ``b*U`` rows, each step reading the cached keys/values.

    PIE's decoder cache holds the ``n_t`` answer tokens; PID's also holds the ``n_p`` prompt tokens.
    Memory ``rows n_t d + rows n_t L d + n_t d^2`` with ``L`` the cache length; operations ``rows n_t d^2``.
    """
    return _component("decoder_self_attention", method, U, b, n_s, n_t, d, n_p)


def cross_attention(method: str, U: int, b: int, n_s: int, n_t: int, d: int,
                    n_p: int = 0) -> Cost:
    """``n_t`` incremental steps of cross-attention over ``b*U`` rows.

    PIE reads ``U`` separate encodings of ``n_s + n_p`` tokens per document at every step; PID reads
    one shared encoding of ``n_s`` tokens. This is the term that makes PID's decoding faster.
    """
    return _component("cross_attention", method, U, b, n_s, n_t, d, n_p)


COMPONENT_FUNCTIONS = {
    "encoder_self_attention": encoder_self_attention,
    "decoder_self_attention": decoder_self_attention,
    "cross_attention": cross_attention,
}


def book_table(U: int, b: int, n_s: int, n_t: int, d: int, n_p: int = 0) -> dict[tuple[str, str], Cost]:
    """Every (component, method) cell as this book counts it: :func:`table1` plus :func:`book_terms`."""
    return {(c, m): COMPONENT_FUNCTIONS[c](m, U, b, n_s, n_t, d, n_p) for c in COMPONENTS for m in TABLE1_METHODS}


def inverse_intensity_ratio(component: str, U: int, b: int, n_s: int, n_t: int, d: int,
                            n_p: int = 0) -> float:
    """PIE's inverse operational intensity over PID's for one component (PID paper, Appendix A).

    Above 1 means PID moves fewer elements per operation, so it sits further right on the roofline.
    """
    check_choice("component", component, COMPONENTS)
    f = COMPONENT_FUNCTIONS[component]
    pie = f("pie", U, b, n_s, n_t, d, n_p)
    pid = f("pid", U, b, n_s, n_t, d, n_p)
    return pie.inverse_intensity / pid.inverse_intensity


# --- The roofline ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Device:
    """A device's peak arithmetic rate (FLOP/s) and memory bandwidth (bytes/s) for one dtype."""

    name: str
    peak_flops: float
    bandwidth: float
    dtype: str = "bf16"

    def __post_init__(self) -> None:
        check_float("peak_flops", self.peak_flops, 0.0, low_inclusive=False)
        check_float("bandwidth", self.bandwidth, 0.0, low_inclusive=False)

    @property
    def ridge_point(self) -> float:
        """The intensity (FLOP/byte) where the roofline turns from memory-bound to compute-bound."""
        return self.peak_flops / self.bandwidth


# Vendor data-sheet figures (dense tensor-core rates, no sparsity).
PRESETS: dict[str, Device] = {
    "a100": Device("NVIDIA A100 40GB SXM", peak_flops=312e12, bandwidth=1.555e12, dtype="bf16"),
    "h100": Device("NVIDIA H100 SXM", peak_flops=989e12, bandwidth=3.35e12, dtype="bf16"),
    "t4": Device("NVIDIA T4", peak_flops=65e12, bandwidth=320e9, dtype="fp16"),
}


def device_preset(name: str) -> Device:
    """A data-sheet device; for the machine you are on, use ``pidutils.bench.measure_device``."""
    return PRESETS[check_choice("name", name.lower() if isinstance(name, str) else name, PRESETS)]


def attainable_flops(intensity: float, device: Device) -> float:
    """The roofline: attainable FLOP/s = min(peak, intensity x bandwidth), intensity in FLOP/byte."""
    check_float("intensity", intensity, 0.0, low_inclusive=False)
    return min(device.peak_flops, intensity * device.bandwidth)


# --- Whole-model forward passes (chapter 1) -------------------------------------------------------

@dataclass(frozen=True)
class Work:
    """FLOPs and bytes of one forward pass, and the time the roofline allows for it."""

    flops: float
    bytes: float

    @property
    def intensity(self) -> float:
        """FLOP per byte moved."""
        return self.flops / self.bytes

    def roofline_seconds(self, device: Device) -> float:
        """The least time this work can take on ``device``: max(compute time, memory time)."""
        return max(self.flops / device.peak_flops, self.bytes / device.bandwidth)


def forward_work(n_params: int, batch: int, new_tokens: int, context: int, d_model: int,
                 n_layers: int, bytes_per_element: int = 4) -> Work:
    """One forward pass of a transformer stack over ``new_tokens`` per sequence.

    FLOPs: ``2 * n_params`` per token (a multiply-add per weight) plus ``4 * n_layers * d_model``
    per (token, context-token) pair for the attention scores and the weighted values. Bytes: every
    weight read once, plus the key/value cache read (``2 * n_layers * context * d_model`` per
    sequence), plus the new tokens' activations written to it. Prefill is ``new_tokens = n``,
    ``context = n``; a decode step is ``new_tokens = 1``. Used in chapter 1 to place prefill and
    decode on the roofline.
    """
    for name, value, low in (("n_params", n_params, 1), ("batch", batch, 1),
                             ("new_tokens", new_tokens, 1), ("context", context, 0),
                             ("d_model", d_model, 1), ("n_layers", n_layers, 1),
                             ("bytes_per_element", bytes_per_element, 1)):
        check_int(name, value, low)
    tokens = batch * new_tokens
    flops = 2 * n_params * tokens + 4 * n_layers * d_model * tokens * context
    kv_elements = 2 * n_layers * d_model * batch * (context + new_tokens)
    bytes_moved = bytes_per_element * (n_params + kv_elements)
    return Work(flops=float(flops), bytes=float(bytes_moved))


def training_flops(encoder_params: int, decoder_params: int, encoder_tokens: int,
                   decoder_tokens: int) -> float:
    """Training FLOPs of one step: 6 per weight per token (2 forward, 4 backward), per stack.

    PIE feeds the encoder ``U (n_s + n_p)`` tokens per document, PID only ``n_s``: the PID paper's
    Table 5 comparison (chapter 3).
    """
    for name, value in (("encoder_params", encoder_params), ("decoder_params", decoder_params),
                        ("encoder_tokens", encoder_tokens), ("decoder_tokens", decoder_tokens)):
        check_int(name, value, 0)
    return 6.0 * (encoder_params * encoder_tokens + decoder_params * decoder_tokens)


# --- Pipelined decoding: time-steps from the schedule (chapter 4) ----------------------------------

def pipelined_steps(lengths: Sequence[int], delta_t: int) -> int:
    """Time-steps pipelined decoding takes for subsequences of ``lengths`` tokens (Huang et al. 2025).

    Subsequence i (from 0) starts at step i·Δt + 1 and makes its L_i tokens and its </s> at one
    per step, so it ends at step i·Δt + L_i + 1; the empty subsequence that closes the output
    starts and ends at step n·Δt + 1. Decoding takes as many steps as the last of them
    (:func:`pidutils.pipelined.algorithm1` with a model that makes exactly these tokens).
    """
    check_int("delta_t", delta_t, 1)
    for length in lengths:
        check_int("each length", length, 0)
    ends = [i * delta_t + length + 1 for i, length in enumerate(lengths)]
    return max(ends + [len(lengths) * delta_t + 1])


def sequential_steps(lengths: Sequence[int], separator_tokens: int = 1) -> int:
    """Time-steps of one sequence holding the same subsequences: every token, a separator between
    subsequences, and </s>."""
    check_int("separator_tokens", separator_tokens, 0)
    for length in lengths:
        check_int("each length", length, 0)
    return sum(lengths) + separator_tokens * max(len(lengths) - 1, 0) + 1


# --- Speculative decoding: tokens per round and the speed-up (chapter 5) ---------------------------

def _check_speculation(alpha: float, gamma: int, c: float) -> None:
    check_float("alpha", alpha, 0.0, 1.0)
    check_int("gamma", gamma, 1)
    check_float("c", c, 0.0)


def expected_tokens(alpha: float, gamma: int) -> float:
    """Tokens one round of speculative decoding makes on average, (1 − α^{γ+1}) / (1 − α)
    (Leviathan et al. 2023, Eq. 1): the standing guesses, a geometric run capped at γ, plus the
    target's own token. γ + 1 when α = 1."""
    _check_speculation(alpha, gamma, 0.0)
    return gamma + 1.0 if alpha == 1 else (1 - alpha ** (gamma + 1)) / (1 - alpha)


def speculative_speedup(alpha: float, gamma: int, c: float) -> float:
    """The expected wall-time speed-up over the target alone, (1 − α^{γ+1}) / ((1 − α)(γc + 1)):
    a round costs γ draft steps (c target steps each) and one target pass, assumed to cost one step."""
    _check_speculation(alpha, gamma, c)
    return expected_tokens(alpha, gamma) / (gamma * c + 1)


def best_gamma(alpha: float, c: float, max_gamma: int = 64) -> int:
    """The γ in 1..max_gamma with the largest expected speed-up (the smallest such γ on a tie)."""
    check_int("max_gamma", max_gamma, 1)
    return max(range(1, max_gamma + 1), key=lambda g: (speculative_speedup(alpha, g, c), -g))


# --- Decoder-only models: one shared prefix, U continuations (chapter 7) ------------------------------

PREFIX_WAYS = ("repeated", "cached", "shared")  # the prefix prefilled U times, copied U times, held once


@dataclass(frozen=True)
class StepBytes:
    """Bytes one decode step reads (every row making one token), by what they hold, and its
    multiply-adds: the decoder-only counterpart of the PID paper's Table 1 (chapter 7)."""

    weights: int
    prefix_kv: int
    suffix_kv: int
    operations: int

    @property
    def total(self) -> int:
        return self.weights + self.prefix_kv + self.suffix_kv


def kv_elements(tokens: int, *, layers: int, kv_heads: int, head_dim: int) -> int:
    """Elements of the keys and values of ``tokens`` tokens, over every layer."""
    return 2 * layers * kv_heads * head_dim * tokens


def prefix_kv_held(way: str, *, U: int, b: int, n_prefix: int, layers: int, kv_heads: int, head_dim: int,
                   bytes_per_element: int = 4) -> int:
    """Bytes of prefix keys and values a way holds for b documents of ``n_prefix`` tokens and U
    questions each: U copies per document, except the shared way's one."""
    check_choice("way", way, PREFIX_WAYS)
    for name, value in (("U", U), ("b", b), ("n_prefix", n_prefix), ("layers", layers), ("kv_heads", kv_heads),
                        ("head_dim", head_dim), ("bytes_per_element", bytes_per_element)):
        check_int(name, value, 1)
    copies = 1 if way == "shared" else U
    return bytes_per_element * b * copies * kv_elements(n_prefix, layers=layers, kv_heads=kv_heads, head_dim=head_dim)


def prefix_step_cost(way: str, *, U: int, b: int, n_prefix: int, n_suffix: int, params: int, layers: int,
                     heads: int, kv_heads: int, head_dim: int, bytes_per_element: int = 4) -> StepBytes:
    """One decode step of b x U rows, each with a suffix of ``n_suffix`` tokens so far (question and
    answer) after a prefix of ``n_prefix``: the weights (``params``, read once), the prefix's K/V
    (read once per row when each row holds a copy, once per document when shared) and each row's
    own suffix K/V. The multiply-adds are the same for every way, ``params`` per row plus each
    query head's scores and weighted values over prefix and suffix: sharing saves reads, not
    arithmetic."""
    held = prefix_kv_held(way, U=U, b=b, n_prefix=n_prefix, layers=layers, kv_heads=kv_heads, head_dim=head_dim,
                          bytes_per_element=bytes_per_element)
    check_int("n_suffix", n_suffix, 0)
    check_int("params", params, 1)
    check_int("heads", heads, kv_heads)
    rows = b * U
    suffix = bytes_per_element * rows * kv_elements(n_suffix, layers=layers, kv_heads=kv_heads, head_dim=head_dim)
    operations = rows * (params + 2 * layers * heads * head_dim * (n_prefix + n_suffix))
    return StepBytes(weights=bytes_per_element * params, prefix_kv=held, suffix_kv=suffix, operations=operations)


# --- An encoder-decoder's memory, whole or compressed to k vectors (chapters 3 and 8) -------------------

def memory_held(*, b: int, n_memory: int, layers: int, heads: int, head_dim: int, bytes_per_element: int = 4) -> int:
    """Bytes of the cross-attention keys and values of b documents of ``n_memory`` vectors each (n_s
    encoder states, or k summary vectors), over every decoder layer: what PID holds, once per document."""
    for name, value in (("b", b), ("n_memory", n_memory), ("layers", layers), ("heads", heads),
                        ("head_dim", head_dim), ("bytes_per_element", bytes_per_element)):
        check_int(name, value, 1)
    return bytes_per_element * b * kv_elements(n_memory, layers=layers, kv_heads=heads, head_dim=head_dim)


def memory_step_cost(*, U: int, b: int, n_memory: int, n_self: int, params: int, layers: int, heads: int,
                     head_dim: int, bytes_per_element: int = 4) -> StepBytes:
    """One PID decode step of b x U rows over a memory of ``n_memory`` vectors per document, each row
    with ``n_self`` decoder tokens so far. PID reads each document's memory once for its U prompts,
    which is chapter 7's shared prefix: :func:`prefix_step_cost` with the memory as the prefix
    (``prefix_kv``), the decoder's own keys and values as the suffix, and ``params`` the weights a
    decoder step reads. Compressing the memory to k vectors shrinks ``prefix_kv`` n_s/k times."""
    return prefix_step_cost("shared", U=U, b=b, n_prefix=n_memory, n_suffix=n_self, params=params, layers=layers,
                            heads=heads, kv_heads=heads, head_dim=head_dim, bytes_per_element=bytes_per_element)
