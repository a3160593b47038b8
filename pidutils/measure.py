"""Models and test dialogues, measured side by side (chapters 4 to 6).

A :class:`Testbed` holds the models of a comparison by role (``sequential`` and ``pipelined`` in
chapter 4, ``target`` and ``draft`` in chapter 5), their one tokenizer, and test dialogues with
their gold states. A :class:`Way` is one way of answering them: the roles whose encodings it
reads and the decoding phase it runs on them. Written once for every comparison:

- :func:`runs`: no-argument functions that answer every dialogue each way, end to end or the
  decoding phase alone, for the timers of :mod:`pidutils.bench`;
- :func:`outcomes` and :func:`jga`: which dialogues each way gets right, each model encoding a
  batch once for all the ways that read it;
- :func:`steps_taken`: the time-steps each way takes per dialogue;
- :func:`step_costs`: the seconds of each model's encoder and of one of its decoding steps.

Chapters 4 to 6 and ``python -m pidutils.bench`` use it, so the book and the command agree.
"""
from __future__ import annotations

import contextlib
import copy
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from . import zoo
from .bench import compare, speedup
from .checks import check_choice, check_int
from .cost import pipelined_steps
from .data import full_state_view, parse_state
from .medusa import Heads, Typical, medusa_decode
from .pipelined import DELTA_TS, Schedule, pipelined_decode, schedule_states, state_targets
from .sequential import MAX_NEW_TOKENS, sequential_decode, sequential_states
from .speculative import Sampling, autoregressive, check_pair, speculative_decode
from .t5 import CrossMemory, document_memory

FULL_STATE = {"sequential": "seq-t5-tiny", "pipelined": "pipe-t5-tiny"}  # chapter 4
SPECULATIVE = {"target": "seq-t5-deep", "draft": "seq-t5-tiny"}  # chapter 5, with its first draft


# --- The testbed: models by role, and test dialogues -----------------------------------------------

@dataclass
class Testbed:
    """Models by role (one tokenizer), their checkpoints' names, and test dialogues with their gold
    states: the subsequences "slot : value" and the values of the 30 slots."""

    models: dict[str, T5ForConditionalGeneration]
    names: dict[str, str]
    tokenizer: PreTrainedTokenizerFast
    documents: list[str]
    subsequences: list[list[str]]
    gold: list[list[str]]

    def __getitem__(self, role: str) -> T5ForConditionalGeneration:
        return self.models[check_choice("role", role, self.models)]

    @property
    def pad(self) -> int:
        return self.tokenizer.pad_token_id

    @property
    def device(self) -> torch.device:
        return next(iter(self.models.values())).device

    def select(self, start: int, stop: int) -> "Testbed":
        """The same models on dialogues ``start`` to ``stop - 1``."""
        return replace(self, documents=self.documents[start:stop], subsequences=self.subsequences[start:stop],
                       gold=self.gold[start:stop])

    def cast(self, dtype: torch.dtype) -> "Testbed":
        """The same dialogues with copies of the models in ``dtype`` (a model already in it is kept):
        the chapters check exactness in float32 and time in :func:`pidutils.models.pick_dtype`."""
        return replace(self, models={role: m if m.dtype == dtype else copy.deepcopy(m).to(dtype)
                                     for role, m in self.models.items()})

    def with_model(self, role: str, name: str) -> "Testbed":
        """The same testbed with the shipped checkpoint ``name`` in ``role``, on the same device,
        checked to share the tokenizer."""
        model, tokenizer = zoo.load(name, self.device)
        if tokenizer.get_vocab() != self.tokenizer.get_vocab():
            raise ValueError(f"name must be a checkpoint with this testbed's tokenizer; {name} has another")
        return replace(self, models=self.models | {role: model}, names=self.names | {role: name})


def load_testbed(checkpoints: dict[str, str], *, device: torch.device | str = "cpu", dialogues: int = 50) -> Testbed:
    """The shipped ``checkpoints`` (role -> name) on ``device``, and the first ``dialogues`` of the
    test split of the first of them (every full-state checkpoint shares it)."""
    check_int("dialogues", dialogues, 1, 200)
    loaded = {role: zoo.load(name, device) for role, name in checkpoints.items()}
    tokenizer = next(iter(loaded.values()))[1]
    for role, (_, other) in loaded.items():
        if other.get_vocab() != tokenizer.get_vocab():
            raise ValueError(f"checkpoints must share one tokenizer; {checkpoints[role]} has another")
    split = zoo.test_split(next(iter(checkpoints.values()))).select(range(dialogues))
    view = full_state_view(split)
    return Testbed({role: model for role, (model, _) in loaded.items()}, dict(checkpoints), tokenizer,
                   list(view["document"]), list(view["subsequences"]), list(split["values"]))


# --- Ways of answering them --------------------------------------------------------------------------

@dataclass(frozen=True)
class Way:
    """One way of answering a batch of dialogues: the roles whose encodings it reads, its decoding
    phase on them (``decode(bed, *memories)``), and each document's subsequences read from its
    output (``states(bed, output)``). ``whole(bed, documents)``, when given, answers end to end
    outside the book's machinery (Hugging Face's ``generate``), and the way has no decoding phase."""

    roles: tuple[str, ...]
    decode: Callable[..., object] | None
    states: Callable[[Testbed, object], list[list[str]]]
    whole: Callable[[Testbed, list[str]], object] | None = field(default=None)


def token_states(bed: Testbed, tokens: torch.Tensor) -> list[list[str]]:
    return sequential_states(bed.tokenizer, tokens)


def sequential_way(role: str = "sequential", *, sampling: Sampling = Sampling(), seed: int = 0) -> Way:
    """The sequential baseline on the model in ``role``: greedy, or sampling with ``sampling``."""
    def decode(bed: Testbed, memory: CrossMemory) -> torch.Tensor:
        generator = torch.Generator(device=bed.device).manual_seed(seed)
        return autoregressive(bed[role], memory, sampling=sampling, pad=bed.pad, generator=generator)
    return Way((role,), decode, token_states)


def pipelined_way(*, delta_t: int = 1) -> Way:
    """Algorithm 1 at ``delta_t`` on the ``pipelined`` model (chapter 4)."""
    return Way(("pipelined",), lambda bed, memory: pipelined_decode(bed["pipelined"], memory, delta_t=delta_t),
               lambda bed, schedules: schedule_states(bed.tokenizer, schedules))


def speculative_way(*, gamma: int, sampling: Sampling = Sampling(), seed: int = 0, target: str = "target") -> Way:
    """Speculative decoding of the model in role ``target`` with ``draft`` (chapter 5): its tokens."""
    def decode(bed: Testbed, target_memory: CrossMemory, draft_memory: CrossMemory) -> torch.Tensor:
        generator = torch.Generator(device=bed.device).manual_seed(seed)
        tokens, _ = speculative_decode(bed[target], bed["draft"], target_memory, draft_memory, gamma=gamma,
                                       sampling=sampling, pad=bed.pad, generator=generator)
        return tokens
    return Way((target, "draft"), decode, token_states)


def medusa_way(heads: Heads, *, tree: Sequence[Sequence[int]], typical: Typical | None = None,
               role: str = "target") -> Way:
    """Medusa on the model in ``role`` with ``heads`` and ``tree`` (chapter 6): greedy acceptance, or ``typical``."""
    def decode(bed: Testbed, memory: CrossMemory) -> torch.Tensor:
        tokens, _ = medusa_decode(bed[role], heads, memory, tree=tree, typical=typical, pad=bed.pad)
        return tokens
    return Way((role,), decode, token_states)


def hf_generate_way(role: str = "sequential") -> Way:
    """Hugging Face's ``generate`` on the model in ``role``, greedy: an outside baseline."""
    def whole(bed: Testbed, documents: list[str]) -> torch.Tensor:
        encoded = bed.tokenizer(documents, padding=True, return_tensors="pt").to(bed.device)
        with torch.inference_mode():
            return zoo.generate(bed[role], **encoded, max_new_tokens=MAX_NEW_TOKENS, do_sample=False, num_beams=1)
    return Way((role,), None, token_states, whole)


def hf_assisted_way(*, gamma: int, sampling: Sampling = Sampling()) -> Way:
    """Hugging Face's assisted generation on ``target`` and ``draft``, with the same γ and warpers
    (its default top_k = 50 off).

    γ, its constant schedule and the confidence threshold are read from the *draft's* generation
    config (:func:`assistant_settings`); passed to the target's ``generate``, as its documentation's
    examples do, they would leave the draft at its defaults: 20 guesses cut short by a confidence
    threshold of 0.4, another algorithm.
    """
    warpers = ({"do_sample": False} if sampling.temperature == 0 else
               {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p})

    def whole(bed: Testbed, documents: list[str]) -> torch.Tensor:
        encoded = bed.tokenizer(documents, padding=True, return_tensors="pt").to(bed.device)
        with (torch.inference_mode(), errors_only(),
              assistant_settings(bed["draft"], num_assistant_tokens=gamma, num_assistant_tokens_schedule="constant",
                                 assistant_confidence_threshold=0.0)):
            return zoo.generate(bed["target"], **encoded, assistant_model=bed["draft"], max_new_tokens=MAX_NEW_TOKENS,
                                **warpers)
    return Way(("target", "draft"), None, token_states, whole)


@contextlib.contextmanager
def assistant_settings(draft: T5ForConditionalGeneration, **settings: object) -> Iterator[None]:
    """Inside the block, the draft's generation config holds ``settings``; restored after."""
    config = draft.generation_config
    saved = {name: getattr(config, name) for name in settings}
    try:
        for name, value in settings.items():
            setattr(config, name, value)
        yield
    finally:
        for name, value in saved.items():
            setattr(config, name, value)


@contextlib.contextmanager
def errors_only() -> Iterator[None]:
    """Silence transformers' warnings inside the block: its assisted generation warns, once per
    process, about arguments it passes to itself."""
    level = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        yield
    finally:
        hf_logging.set_verbosity(level)


def full_state_ways(*, delta_t: int = 1, hugging_face: bool = True) -> dict[str, Way]:
    """Chapter 4's ways: ``sequential``, ``pipelined`` at ``delta_t``, and ``HF generate``."""
    ways = {"sequential": sequential_way(), "pipelined": pipelined_way(delta_t=delta_t)}
    return ways | ({"HF generate": hf_generate_way()} if hugging_face else {})


def speculative_ways(gammas: Sequence[int], *, sampling: Sampling = Sampling(),
                     hugging_face: bool = True) -> dict[str, Way]:
    """Chapter 5's ways: ``target`` alone, and for each γ ``speculative gamma=g`` and ``HF assisted gamma=g``."""
    for gamma in gammas:
        check_int("gamma", gamma, 1)
    ways = {"target": sequential_way("target", sampling=sampling)}
    for g in gammas:
        ways[f"speculative gamma={g}"] = speculative_way(gamma=g, sampling=sampling)
        if hugging_face:
            ways[f"HF assisted gamma={g}"] = hf_assisted_way(gamma=g, sampling=sampling)
    return ways


# --- Measured once for every comparison ---------------------------------------------------------------

def batches(items: list, b: int) -> list[list]:
    """``items`` in consecutive batches of ``b`` (the last may be shorter)."""
    check_int("b", b, 1)
    return [items[i:i + b] for i in range(0, len(items), b)]


def memories(bed: Testbed, roles: Sequence[str], documents: list[str]) -> list[CrossMemory]:
    """Each role's model encodes the documents once: the memories a way reads."""
    return [document_memory(bed[role], bed.tokenizer, documents) for role in roles]


def batch_runs(bed: Testbed, ways: dict[str, Way], *, b: int = 1,
               decoding_only: bool = False) -> dict[str, list[Callable[[], object]]]:
    """For each way, one no-argument call per batch of ``b`` dialogues, answering it: the parts
    :func:`pidutils.bench.compare` interleaves batch by batch.

    End to end, each batch is encoded by the models a way reads, then decoded. With
    ``decoding_only=True`` the encodings are made beforehand, and only the ways with a decoding
    phase are timed.
    """
    groups = batches(bed.documents, b)
    if decoding_only:
        encoded = {role: [memories(bed, [role], g)[0] for g in groups] for way in ways.values() for role in way.roles}
        return {name: [lambda way=way, i=i: way.decode(bed, *(encoded[r][i] for r in way.roles))
                       for i in range(len(groups))]
                for name, way in ways.items() if way.whole is None}
    return {name: [lambda way=way, g=g: way.whole(bed, g) if way.whole else way.decode(bed, *memories(bed, way.roles, g))
                   for g in groups]
            for name, way in ways.items()}


def runs(bed: Testbed, ways: dict[str, Way], *, b: int = 1, decoding_only: bool = False) -> dict[str, Callable[[], list]]:
    """No-argument functions that answer every dialogue, ``b`` at a time, each way: the calls of
    :func:`batch_runs` one after another, with their outputs."""
    return {name: (lambda calls=calls: [call() for call in calls])
            for name, calls in batch_runs(bed, ways, b=b, decoding_only=decoding_only).items()}


def answers(bed: Testbed, way: Way, *, b: int = 1) -> list[list[str]]:
    """Each dialogue's subsequences as ``way`` answers them, ``b`` dialogues at a time."""
    groups = batches(bed.documents, b)
    return [state for g, output in zip(groups, runs(bed, {"way": way}, b=b)["way"]())
            for state in way.states(bed, output)]


@torch.inference_mode()
def outcomes(bed: Testbed, ways: dict[str, Way], *, b: int = 8) -> dict[str, list[bool]]:
    """Whether each way gets each dialogue's whole state right (joint goal accuracy per dialogue).

    Dialogues go ``b`` at a time in their order (as the shipped models' test reports do); each
    model encodes a batch once for every way that reads it.
    """
    right: dict[str, list[bool]] = {name: [] for name in ways}
    roles = sorted({role for way in ways.values() for role in way.roles})
    for start in range(0, len(bed.documents), b):
        documents, gold = bed.documents[start:start + b], bed.gold[start:start + b]
        encoded = dict(zip(roles, memories(bed, roles, documents)))
        for name, way in ways.items():
            output = way.whole(bed, documents) if way.whole else way.decode(bed, *(encoded[r] for r in way.roles))
            right[name] += [parse_state(state) == list(g) for state, g in zip(way.states(bed, output), gold, strict=True)]
    return right


def jga(bed: Testbed, ways: dict[str, Way], *, b: int = 8) -> dict[str, float]:
    """Joint goal accuracy of each way on the testbed's dialogues: the whole 30-slot state right."""
    return {name: sum(r) / len(r) for name, r in outcomes(bed, ways, b=b).items()}


def steps_taken(bed: Testbed, way: Way) -> list[int]:
    """Time-steps ``way`` takes per dialogue: tokens up to and with ``</s>`` for a sequential way,
    Algorithm 1's time-steps for the pipelined one."""
    output = way.decode(bed, *memories(bed, way.roles, bed.documents))
    if isinstance(output, list) and all(isinstance(s, Schedule) for s in output):
        return [s.steps for s in output]
    eos = next(iter(bed.models.values())).config.eos_token_id
    ended = [(row == eos).nonzero() for row in output]
    return [int(e[0]) + 1 if len(e) else output.shape[1] for e in ended]


def step_costs(bed: Testbed, *, roles: Sequence[str], index: int = 0, repeats: int = 5) -> dict[str, dict[str, float]]:
    """Seconds of each role's encoder (with the K/V projection) and of one of its greedy decoding
    steps alone, on dialogue ``index``, the models timed interleaved: ``{role: {"encoder_s",
    "step_s", "tokens"}}``."""
    document = [bed.documents[index]]
    memory = dict(zip(roles, memories(bed, roles, document)))
    tokens = {r: sequential_decode(bed[r], memory[r], pad=bed.pad).shape[1] for r in roles}
    encoders = compare({r: lambda r=r: memories(bed, [r], document) for r in roles}, bed.device, warmup=1,
                       repeats=repeats)
    decoders = compare({r: lambda r=r: sequential_decode(bed[r], memory[r], pad=bed.pad) for r in roles}, bed.device,
                       warmup=1, repeats=repeats)
    return {r: {"encoder_s": encoders[r].median, "step_s": decoders[r].median / tokens[r], "tokens": tokens[r]}
            for r in roles}


def encoding_seconds(bed: Testbed, *, role: str, b: int = 1, repeats: int = 3) -> float:
    """Median seconds for the model in ``role`` to encode every dialogue of ``bed``, ``b`` at a time,
    with the K/V projection: the fixed cost each request pays before decoding (chapter 4)."""
    parts = [lambda g=g: memories(bed, [role], g) for g in batches(bed.documents, b)]
    return compare({"encoder": parts}, bed.device, warmup=1, repeats=repeats)["encoder"].median


# --- Statistics of paired outcomes -----------------------------------------------------------------------

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


# --- Chapter 4: the schedule's prediction, and the speed-up by number of subsequences ----------------------

def gold_lengths(bed: Testbed, index: int) -> list[int]:
    """Token counts of one dialogue's gold subsequences."""
    return [len(t) for t in state_targets(bed.tokenizer, bed.subsequences[index])]


def predicted_latency(bed: Testbed, index: int, *, delta_t: int, encoder_s: float, step_s: float) -> float:
    """Latency the schedule predicts for one dialogue: the encoder, then one step per time-step of
    :func:`pidutils.cost.pipelined_steps` for its gold subsequences, at the sequential step's cost."""
    return encoder_s + pipelined_steps(gold_lengths(bed, index), delta_t) * step_s


def subsequence_speedups(bed: Testbed, *, repeats: int = 3) -> dict[int, float]:
    """End-to-end speed-up of pipelined over sequential decoding, b = 1, by number of gold subsequences.

    Each dialogue is timed alone, the two decoders interleaved; the ratio of the summed medians per
    number of subsequences (the paper's Figure 4).
    """
    totals: dict[int, list[float]] = {}
    ways = full_state_ways(hugging_face=False)
    for index in range(len(bed.documents)):
        t = compare(batch_runs(bed.select(index, index + 1), ways), bed.device, warmup=1, repeats=repeats)
        pair = totals.setdefault(len(bed.subsequences[index]), [0.0, 0.0])
        pair[0] += t["sequential"].median
        pair[1] += t["pipelined"].median
    return {k: seq / pipe for k, (seq, pipe) in totals.items()}


# --- Chapter 4: throughput rows, for its tables and the ``pipelined`` experiment ---------------------------

def row_key(name: str) -> str:
    """A way's name as an ASCII key of a result row: ``"HF generate"`` -> ``"HF_generate"``."""
    return name.replace(" ", "_").replace("=", "")


def full_state_throughput(bed: Testbed, *, b: int = 1, delta_t: int = 1, hugging_face: bool = True,
                          repeats: int = 3) -> list[dict]:
    """Chapter 4's throughput rows: :func:`full_state_ways` timed interleaved on every dialogue of
    ``bed``, ``b`` at a time, end to end and in the decoding phase alone, one row per phase.

    A row holds ``b``, ``phase``, and for each way timed ``<way>_s`` (median seconds for all the
    dialogues) and ``<way>_per_s`` (examples per second, the paper's throughput); ``speedup``,
    pipelined over sequential (:func:`pidutils.bench.speedup`), and ``speedup_vs_hf`` where
    ``HF generate`` is timed (end to end only: it has no decoding phase of its own). The
    decoding-phase row adds what explains its speed-up: ``<way>_steps``, the time-steps decoding
    runs (per batch, its longest document's, :func:`steps_taken`), ``steps_ratio``, sequential
    over pipelined (the most the schedule allows), and ``step_cost``, the seconds of a pipelined
    time-step over a sequential one's.
    """
    ways = full_state_ways(delta_t=delta_t, hugging_face=hugging_face)
    n = len(bed.documents)
    rows = []
    for phase, decoding_only in (("end to end", False), ("decoding phase", True)):
        t = compare(batch_runs(bed, ways, b=b, decoding_only=decoding_only), bed.device, warmup=1, repeats=repeats)
        row = {"b": b, "phase": phase, **{f"{row_key(name)}_s": timing.median for name, timing in t.items()},
               **{f"{row_key(name)}_per_s": n / timing.median for name, timing in t.items()},
               "speedup": speedup(t["sequential"], t["pipelined"])}
        if "HF generate" in t:
            row["speedup_vs_hf"] = speedup(t["HF generate"], t["pipelined"])
        if decoding_only:
            for name in ("sequential", "pipelined"):
                taken = steps_taken(bed, ways[name])
                row[f"{name}_steps"] = sum(max(taken[i:i + b]) for i in range(0, n, b))
            row["steps_ratio"] = row["sequential_steps"] / row["pipelined_steps"]
            row["step_cost"] = row["steps_ratio"] / row["speedup"]
        rows.append(row)
    return rows


def delta_t_throughput(bed: Testbed, *, delta_ts: Sequence[int] = DELTA_TS, repeats: int = 3) -> list[dict]:
    """Chapter 4's rows of the pipelined decoder at each Δt (the paper's Table 5), timed interleaved
    end to end, one dialogue at a time: ``delta_t``, ``seconds`` (median, all the dialogues),
    ``examples_per_s``, and ``steps``, the time-steps per dialogue."""
    ways = {d: pipelined_way(delta_t=d) for d in delta_ts}
    t = compare({d: batch_runs(bed, {"pipelined": way})["pipelined"] for d, way in ways.items()}, bed.device, warmup=1,
                repeats=repeats)
    n = len(bed.documents)
    return [{"delta_t": d, "seconds": t[d].median, "examples_per_s": n / t[d].median,
             "steps": sum(steps_taken(bed, way)) / n} for d, way in ways.items()]
