"""Sequential and pipelined decoding of the full dialogue state, measured side by side (chapter 4).

One place loads the two shipped full-state models and a set of test dialogues
(:func:`load_full_state`), builds each way of answering them as a no-argument function to time
(:func:`runs`), counts their time-steps, scores them (JGA), and predicts a pipelined latency from
the schedule (:func:`predicted_latency`). Chapter 4 and ``python -m pidutils.bench pipelined``
use it, so the book and the command agree.
"""
from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .bench import compare, time_fn
from .checks import check_int
from .cost import pipelined_steps
from .data import full_state_view, parse_state
from .metrics import joint_goal_accuracy
from .pipelined import (SEQUENTIAL_SEPARATOR, document_memory, pipelined_decode, pipelined_generate,
                        pipelined_generate_ids, sequential_decode, sequential_generate, sequential_generate_ids,
                        state_targets)

MAX_NEW_TOKENS = 120  # the sequential decoder's limit: the longest test state is about 80 tokens


@dataclass
class FullState:
    """The sequential and the pipelined model (one tokenizer), and ``n`` test dialogues with their gold states."""

    seq: T5ForConditionalGeneration
    pipe: T5ForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    documents: list[str]
    subsequences: list[list[str]]
    gold: list[list[str]]

    @property
    def pad(self) -> int:
        return self.tokenizer.pad_token_id

    def select(self, start: int, stop: int) -> "FullState":
        """The same models on dialogues ``start`` to ``stop - 1``."""
        return FullState(self.seq, self.pipe, self.tokenizer, self.documents[start:stop],
                         self.subsequences[start:stop], self.gold[start:stop])

    def cast(self, dtype: torch.dtype) -> "FullState":
        """The same dialogues with copies of both models in ``dtype`` (itself if they are in it
        already): the checks run in fp32, the measurements in :func:`pidutils.models.pick_dtype`."""
        if self.seq.dtype == dtype and self.pipe.dtype == dtype:
            return self
        return FullState(copy.deepcopy(self.seq).to(dtype), copy.deepcopy(self.pipe).to(dtype), self.tokenizer,
                         self.documents, self.subsequences, self.gold)


def load_full_state(device: torch.device | str = "cpu", dialogues: int = 50) -> FullState:
    """``seq-t5-tiny`` and ``pipe-t5-tiny`` on ``device``, and the first ``dialogues`` test dialogues."""
    from . import zoo
    check_int("dialogues", dialogues, 1, 200)
    seq, tokenizer = zoo.load("seq-t5-tiny", device)
    pipe, _ = zoo.load("pipe-t5-tiny", device)
    split = zoo.test_split("pipe-t5-tiny").select(range(dialogues))
    view = full_state_view(split)
    return FullState(seq, pipe, tokenizer, list(view["document"]), list(view["subsequences"]), list(split["values"]))


def batches(items: list, b: int) -> list[list]:
    """``items`` in consecutive batches of ``b`` (the last may be shorter)."""
    check_int("b", b, 1)
    return [items[i:i + b] for i in range(0, len(items), b)]


def runs(fs: FullState, b: int = 1, delta_t: int = 1, decoding_only: bool = False) -> dict[str, Callable[[], object]]:
    """No-argument functions that answer every dialogue, ``b`` at a time, each way.

    End to end (encoder included): ``sequential`` and ``pipelined`` on the book's decoder pass, and
    Hugging Face ``generate`` on the sequential model, an outside baseline. With
    ``decoding_only=True``: the two decoders after the encoder, whose output is computed beforehand.
    """
    groups = batches(fs.documents, b)
    if decoding_only:
        seq_memory = [document_memory(fs.seq, fs.tokenizer, g) for g in groups]
        pipe_memory = [document_memory(fs.pipe, fs.tokenizer, g) for g in groups]
        return {"sequential": lambda: [sequential_decode(fs.seq, m, fs.pad, MAX_NEW_TOKENS) for m in seq_memory],
                "pipelined": lambda: [pipelined_decode(fs.pipe, m, fs.pad, delta_t) for m in pipe_memory]}
    encoded = [fs.tokenizer(g, padding=True, return_tensors="pt").to(fs.seq.device) for g in groups]

    def hugging_face() -> list[torch.Tensor]:
        with torch.inference_mode():
            return [fs.seq.generate(**e, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1) for e in encoded]

    return {"sequential": lambda: [sequential_generate_ids(fs.seq, fs.tokenizer, g, MAX_NEW_TOKENS) for g in groups],
            "pipelined": lambda: [pipelined_generate_ids(fs.pipe, fs.tokenizer, g, delta_t) for g in groups],
            "HF generate": hugging_face}


def sequential_steps(fs: FullState) -> list[int]:
    """Time-steps the sequential decoder takes per dialogue: its tokens up to and with </s>."""
    eos = fs.seq.config.eos_token_id
    steps = []
    for ids in sequential_generate_ids(fs.seq, fs.tokenizer, fs.documents, MAX_NEW_TOKENS):
        ended = (ids == eos).nonzero()
        steps.append(int(ended[0]) + 1 if len(ended) else len(ids))
    return steps


def pipelined_steps_taken(fs: FullState, delta_t: int = 1) -> list[int]:
    """Time-steps the pipelined decoder takes per dialogue (Algorithm 1's schedule)."""
    return [s.steps for s in pipelined_generate_ids(fs.pipe, fs.tokenizer, fs.documents, delta_t)]


def jga(fs: FullState, method: str, delta_t: int = 1) -> float:
    """Joint goal accuracy of one decoder on the dialogues: the whole 30-slot state right."""
    if method == "sequential":
        states = sequential_generate(fs.seq, fs.tokenizer, fs.documents, MAX_NEW_TOKENS)
    else:
        states = pipelined_generate(fs.pipe, fs.tokenizer, fs.documents, delta_t)
    return joint_goal_accuracy([parse_state(s) for s in states], fs.gold)


@dataclass
class Outcomes:
    """Per dialogue, whether a decoder got the whole state right: the sequential one, and the
    pipelined one at each Δt. The same dialogues in the same order, so any two can be paired."""

    sequential: list[bool]
    pipelined: dict[int, list[bool]]

    def jga(self, which: str | int) -> float:
        """JGA of ``"sequential"`` or of the pipelined decoder at Δt = ``which``."""
        right = self.sequential if which == "sequential" else self.pipelined[which]
        return sum(right) / len(right)


@torch.inference_mode()
def outcomes(fs: FullState, delta_ts: Sequence[int] = (1, 2, 3), batch: int = 8) -> Outcomes:
    """Whether each decoder gets each dialogue's whole state right (joint goal accuracy per dialogue).

    Dialogues go ``batch`` at a time in their order (as the shipped models' test reports do);
    each model encodes a batch once, and the pipelined model decodes it at every Δt from that
    one encoding, so four decoders cost two encoder passes.
    """
    check_int("batch", batch, 1)
    for delta_t in delta_ts:
        check_int("each delta_t", delta_t, 1)
    sequential: list[bool] = []
    pipelined: dict[int, list[bool]] = {d: [] for d in delta_ts}
    for start in range(0, len(fs.documents), batch):
        documents, gold = fs.documents[start:start + batch], fs.gold[start:start + batch]
        ids = sequential_decode(fs.seq, document_memory(fs.seq, fs.tokenizer, documents), fs.pad, MAX_NEW_TOKENS)
        texts = fs.tokenizer.batch_decode(ids, skip_special_tokens=True)
        states = [[s.strip() for s in t.split(SEQUENTIAL_SEPARATOR.strip()) if s.strip()] for t in texts]
        sequential += _right(states, gold)
        memory = document_memory(fs.pipe, fs.tokenizer, documents)
        for delta_t in delta_ts:
            schedules = pipelined_decode(fs.pipe, memory, fs.pad, delta_t)
            pipelined[delta_t] += _right([[fs.tokenizer.decode(s).strip() for s in doc.subsequences]
                                          for doc in schedules], gold)
    return Outcomes(sequential, pipelined)


def _right(states: list[list[str]], gold: list[list[str]]) -> list[bool]:
    return [parse_state(state) == list(g) for state, g in zip(states, gold, strict=True)]


def standard_error(right: Sequence[bool]) -> float:
    """The binomial standard error of an accuracy over ``len(right)`` dialogues: sqrt(p(1 − p)/n)."""
    p = sum(right) / len(right)
    return math.sqrt(p * (1 - p) / len(right))


def paired(a: Sequence[bool], b: Sequence[bool]) -> tuple[int, int, float]:
    """Two decoders on the same dialogues: how many only ``a`` gets right, how many only ``b``, and
    the exact two-sided McNemar p-value of a difference that large if neither were better (the
    dialogues both get right, or both wrong, say nothing about which is better)."""
    only_a = sum(x and not y for x, y in zip(a, b, strict=True))
    only_b = sum(y and not x for x, y in zip(a, b, strict=True))
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2 ** n
    return only_a, only_b, min(1.0, 2 * tail)


def gold_lengths(fs: FullState, index: int) -> list[int]:
    """Token counts of one dialogue's gold subsequences."""
    return [len(t) for t in state_targets(fs.tokenizer, fs.subsequences[index])]


def predicted_latency(fs: FullState, index: int, delta_t: int, encoder_s: float, step_s: float) -> float:
    """Latency the schedule predicts for one dialogue: the encoder, then one step per time-step of
    :func:`pidutils.cost.pipelined_steps` for its gold subsequences, at the sequential step's cost."""
    return encoder_s + pipelined_steps(gold_lengths(fs, index), delta_t) * step_s


def step_costs(fs: FullState, index: int = 0, repeats: int = 5) -> tuple[float, float]:
    """Seconds of the encoder (with the K/V projection) and of one sequential decode step, on one dialogue."""
    device = fs.seq.device
    document = [fs.documents[index]]
    encoder = time_fn(lambda: document_memory(fs.seq, fs.tokenizer, document), device, warmup=1, repeats=repeats)
    memory = document_memory(fs.seq, fs.tokenizer, document)
    steps = sequential_steps(fs.select(index, index + 1))[0]
    decode = time_fn(lambda: sequential_decode(fs.seq, memory, fs.pad, MAX_NEW_TOKENS), device, warmup=1,
                     repeats=repeats)
    return encoder.median, decode.median / steps


def subsequence_speedups(fs: FullState, device: torch.device | str, repeats: int = 3) -> dict[int, float]:
    """End-to-end speed-up of pipelined over sequential decoding, b = 1, by number of gold subsequences.

    Each dialogue is timed alone, the two decoders interleaved; the ratio of the summed medians per
    number of subsequences (the paper's Figure 4).
    """
    totals: dict[int, list[float]] = {}
    for index in range(len(fs.documents)):
        ways = runs(fs.select(index, index + 1))
        t = compare({name: ways[name] for name in ("sequential", "pipelined")}, device, warmup=1, repeats=repeats)
        pair = totals.setdefault(len(fs.subsequences[index]), [0.0, 0.0])
        pair[0] += t["sequential"].median
        pair[1] += t["pipelined"].median
    return {k: seq / pipe for k, (seq, pipe) in totals.items()}
