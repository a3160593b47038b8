"""Pipelined decoding (Huang et al. 2025): a new subsequence every Δt steps, all growing in parallel (chapter 4).

The target is n subsequences Y_1..Y_n (here, one "slot : value" per slot that is set). Each becomes
[<bos>, Y_i, </s>], and the empty subsequence [<bos>, </s>] is appended to teach the model to stop
starting new ones. Counting subsequences i and positions j from 0 (j = 0 is the <bos>), the token
at (i, j) sits at time τ = i·Δt + j and predicts the token after it, at step τ + 1: the paper's
"token j of subsequence i is produced at step (i−1)·Δt + j" in its 1-based count.

- **Mask, Eq. (4):** the token at (i, τ) sees the token at (i', τ') if and only if i' <= i and
  τ' <= τ: its own subsequence and earlier ones, up to the current time, nothing of later ones.
- **Positions:** the Manhattan distance |τ − τ'| + |i − i'|, put through T5's learned relative
  position bias as a distance into the past. The weights are those of an ordinary T5 decoder.

One decoder pass (:func:`pidutils.t5.decoder_forward`) serves the teacher-forced training batch,
the cached decoder and the uncached reference; only the tokens and their coordinates differ, so
decoding forced along a target gives the teacher-forced logits. :func:`algorithm1` is the
schedule of the paper's Algorithm 1, written once for any step function: the model with a KV
cache (:func:`cached_step`), the model rerun on everything so far (:func:`uncached_step`), or a
scripted model in the tests.
"""
from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from itertools import accumulate
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .batching import pad_rows, word_buckets
from .checks import check_documents, check_int
from .data import full_state_view
from .t5 import (CrossMemory, KVCache, bias_table, check_t5, decoder_forward, document_memory, encoded_memory,
                 position_bias)
from .tokenizer import check_vocab

DELTA_TS = (1, 2, 3, 4)  # the Δt a shipped pipelined model is trained and measured at
TIME_MAX, SUB_MAX = 50, 20  # Algorithm 1's limits: time-steps, and subsequences per document
CACHE_START = 128  # tokens the KV cache first holds per document; it doubles when a document needs more
PAD_SUB = 1 << 20  # the subsequence index of a decoding step's padding: after every real one, so no real token sees it


# --- The layout: coordinates, mask and positions ---------------------------------------------------

def coordinates(lengths: Sequence[int], delta_t: int) -> list[tuple[int, int]]:
    """(subsequence, time) of the input tokens of subsequences of ``lengths`` input tokens each.

    A subsequence's input tokens are its <bos> and its content (its </s> is only ever predicted).
    Token j of subsequence i sits at time i·Δt + j. The order is the one decoding makes them in:
    by time, then by subsequence.
    """
    check_int("delta_t", delta_t, 1)
    return sorted(((i, i * delta_t + j) for i, n in enumerate(lengths) for j in range(n)),
                  key=lambda c: (c[1], c[0]))


def attention_mask(sub_q: torch.Tensor, time_q: torch.Tensor, sub_k: torch.Tensor, time_k: torch.Tensor,
                   valid_k: torch.Tensor) -> torch.Tensor:
    """Eq. (4): query (i, τ) may attend to key (i', τ') iff i' <= i and τ' <= τ (and the key is real).

    Queries ``(rows, q)``, keys ``(rows, k)``; returns ``(rows, q, k)``.
    """
    return (sub_k[:, None, :] <= sub_q[:, :, None]) & (time_k[:, None, :] <= time_q[:, :, None]) & valid_k[:, None, :]


def manhattan(sub_q: torch.Tensor, time_q: torch.Tensor, sub_k: torch.Tensor, time_k: torch.Tensor) -> torch.Tensor:
    """|τ − τ'| + |i − i'| between every query and key: ``(rows, q, k)``."""
    return (time_q[:, :, None] - time_k[:, None, :]).abs() + (sub_q[:, :, None] - sub_k[:, None, :]).abs()


def self_bias(table: torch.Tensor, sub_q: torch.Tensor, time_q: torch.Tensor, sub_k: torch.Tensor,
              time_k: torch.Tensor, valid_k: torch.Tensor) -> torch.Tensor:
    """The pipelined decoder's self-attention bias ``(rows, h, q, k)``: T5's learned bias
    (``table``, :func:`pidutils.t5.bias_table`) at the Manhattan distance into the past, under the
    mask of Eq. (4)."""
    return position_bias(table, manhattan(sub_q, time_q, sub_k, time_k),
                         attention_mask(sub_q, time_q, sub_k, time_k, valid_k))


def step_bias(table: torch.Tensor, sub_q: torch.Tensor, pos_q: torch.Tensor, sub_k: torch.Tensor,
              pos_k: torch.Tensor) -> torch.Tensor:
    """:func:`self_bias` for one decoding step, from each token's subsequence i and its τ + i.

    A step's queries all sit at one time τ and every key at or before it, so Eq. (4) reduces to
    i' <= i, and the Manhattan distance to (τ + i) − (τ' + i') wherever that holds. A padding key
    has i' = ``PAD_SUB``, after every real query's i, so it needs no mask of its own. Fewer
    operations at every step, the same bias (``tests/test_pipelined.py``).
    """
    return position_bias(table, pos_q[:, :, None] - pos_k[:, None, :], sub_k[:, None, :] <= sub_q[:, :, None])


# --- Training: the teacher-forced layout and its loss ---------------------------------------------

@dataclass
class Layout:
    """Decoder input tokens with their coordinates, one row per document: each tensor ``(rows, n)``."""

    ids: torch.Tensor
    sub: torch.Tensor
    time: torch.Tensor
    valid: torch.Tensor

    def to(self, device: torch.device | str) -> "Layout":
        """The same layout on ``device`` (no copy where it is already there)."""
        return Layout(self.ids.to(device), self.sub.to(device), self.time.to(device), self.valid.to(device))


def training_layout(targets: Sequence[Sequence[Sequence[int]]], delta_ts: Sequence[int], *, bos: int, eos: int,
                    pad: int, device: torch.device | str | None = None) -> tuple[Layout, torch.Tensor]:
    """The teacher-forced layout of each document's subsequences (token ids without <bos>/</s>).

    Each subsequence becomes [<bos>, Y_i, </s>] and the empty [<bos>, </s>] is appended; the input
    tokens are laid out by :func:`coordinates` at the document's Δt, and each one's label is the
    next token of its own subsequence. Rows are right-padded (``valid`` False, label -100).
    Returns the layout and the labels ``(rows, n)``, made on ``device`` (None: torch's default
    device, as for training batches, which the training loop moves to the model).
    """
    rows = []
    for subsequences, delta_t in zip(targets, delta_ts, strict=True):
        full = [[bos, *y, eos] for y in subsequences] + [[bos, eos]]
        coords = coordinates([len(y) - 1 for y in full], delta_t)
        rows.append([(full[i][t - i * delta_t], i, t, full[i][t - i * delta_t + 1]) for i, t in coords])
    ids, sub, time, labels = torch.tensor(pad_rows(rows, (pad, 0, 0, -100)), dtype=torch.long,
                                          device=device).unbind(-1)
    valid = torch.tensor(pad_rows([[True] * len(row) for row in rows], False), device=device)
    return Layout(ids, sub, time, valid), labels


def state_targets(tokenizer: PreTrainedTokenizerFast, subsequences: Sequence[str]) -> list[list[int]]:
    """The token ids of each "slot : value" subsequence, without special tokens."""
    return [tokenizer(s, add_special_tokens=False)["input_ids"] for s in subsequences]


def pipelined_batches(split, tokenizer: PreTrainedTokenizerFast, model: T5ForConditionalGeneration, *,
                      batch_size: int = 8, delta_ts: Sequence[int] = DELTA_TS,
                      curriculum: int = 0) -> Callable[[random.Random], dict]:
    """Training batches for the pipelined decoder: dialogues of similar length, a Δt drawn per dialogue.

    Drawing Δt from ``delta_ts`` for each dialogue trains one model for all of them (chapter 4
    measures what that does). Returns ``next_batch(rng) -> dict`` for :func:`pidutils.train.train`
    with :func:`pipelined_loss`.
    """
    check_int("batch_size", batch_size, 1)
    for delta_t in delta_ts:
        check_int("delta_t", delta_t, 1)
    view = full_state_view(split)
    documents, targets = view["document"], [state_targets(tokenizer, s) for s in view["subsequences"]]
    draw = word_buckets(documents, batch_size=batch_size, curriculum=curriculum)
    bos, eos, pad = model.config.decoder_start_token_id, model.config.eos_token_id, tokenizer.pad_token_id

    def next_batch(rng: random.Random) -> dict:
        picked = draw(rng)
        layout, labels = training_layout([targets[i] for i in picked], [rng.choice(delta_ts) for _ in picked],
                                         bos=bos, eos=eos, pad=pad)
        enc = tokenizer([documents[i] for i in picked], padding=True, truncation=True, return_tensors="pt")
        return {"input_ids": enc["input_ids"], "attention_mask": enc["attention_mask"],
                "decoder_input_ids": layout.ids, "sub": layout.sub, "time": layout.time, "valid": layout.valid,
                "labels": labels}

    return next_batch


def teacher_forced_logits(model: T5ForConditionalGeneration, memory: CrossMemory, layout: Layout) -> torch.Tensor:
    """One decoder pass over a whole layout, every token under the mask and positions of Eq. (4)."""
    layout = layout.to(model.device)
    bias = self_bias(bias_table(model), layout.sub, layout.time, layout.sub, layout.time, layout.valid)
    return decoder_forward(model, layout.ids, memory, bias)


def pipelined_loss(model: T5ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """Eq. (6), averaged over tokens: cross-entropy of every subsequence's next token, teacher-forced."""
    memory = encoded_memory(model, batch["input_ids"], batch["attention_mask"])
    layout = Layout(batch["decoder_input_ids"], batch["sub"], batch["time"], batch["valid"])
    logits = teacher_forced_logits(model, memory, layout)
    return F.cross_entropy(logits.flatten(0, 1), batch["labels"].flatten(), ignore_index=-100)


# --- Algorithm 1: the schedule ----------------------------------------------------------------------

# A decoding step: the step's input tokens and their coordinates, each (b, K) -> logits (b, K, vocab).
# The steps made here carry the device their inputs must be on, as an attribute ``device``
# (:func:`on_device`), so that Algorithm 1 builds each step's inputs there.
StepFn = Callable[[Layout], torch.Tensor]


def on_device(step: StepFn, device: torch.device | str) -> StepFn:
    """``step``, marked with the device its inputs are made on by :func:`algorithm1`."""
    step.device = torch.device(device)
    return step


def step_device(step: StepFn) -> torch.device:
    """The device a step's inputs are made on: the one :func:`on_device` marked it with."""
    device = getattr(step, "device", None)
    if device is None:
        raise ValueError("device must be given when the step does not carry one (pidutils.pipelined.on_device): "
                         "pass the model's device, e.g. device=model.device")
    return device


@dataclass
class Schedule:
    """What Algorithm 1 did for one document.

    ``subsequences``: each one's tokens, without <bos> and </s>; ``made``: for each time-step until
    the document finished, the subsequences that got a token (</s> included; empty on an idle step).
    """

    subsequences: list[list[int]] = field(default_factory=list)
    made: list[list[int]] = field(default_factory=list)
    ended: list[bool] = field(default_factory=list)
    closed: bool = False  # no new subsequence will start: one came out empty, or sub_max have started

    @property
    def steps(self) -> int:
        """Time-steps from the first to the last token."""
        return len(self.made)

    @property
    def finished(self) -> bool:
        """Closed, and every subsequence has ended."""
        return self.closed and all(self.ended)


def check_schedule(*, delta_t: int, time_max: int, sub_max: int) -> None:
    """Δt, time_max and sub_max must each be at least 1."""
    check_int("delta_t", delta_t, 1)
    check_int("time_max", time_max, 1)
    check_int("sub_max", sub_max, 1)


def algorithm1(step: StepFn, *, b: int, delta_t: int, time_max: int = TIME_MAX, sub_max: int = SUB_MAX, bos: int,
               eos: int, device: torch.device | str | None = None) -> list[Schedule]:
    """The paper's Algorithm 1 for ``b`` documents sharing one schedule, greedy.

    For t = 1..time_max: if (t − 1) mod Δt = 0, each document starts a new subsequence with <bos>,
    until it has started ``sub_max`` or one of its subsequences has come out empty. Then every
    subsequence not yet ended gets one token. A document is done once it starts no more and all its
    subsequences have ended; the loop stops when every document is done, or at time_max.

    Two readings of ours, where the paper is brief: the empty subsequence, which training appends to
    every target, is the model's signal that no more follow, so it closes the document; and a
    document whose subsequences have all ended before the next one may start waits for it (the
    step is idle, and costs no model call) instead of stopping, which would drop the rest of its
    output whenever Δt exceeds a subsequence's length. The schedules' state stays in tensors on
    ``device`` (:class:`Progress`; None takes the device the step carries, :func:`on_device`), and
    a step reads back one short row: whether any document is open, and which slots grow in any.
    """
    check_int("b", b, 1)
    check_schedule(delta_t=delta_t, time_max=time_max, sub_max=sub_max)
    state = Progress(b, sub_max=sub_max, bos=bos, eos=eos,
                     device=step_device(step) if device is None else torch.device(device))
    for t in range(1, time_max + 1):
        if (t - 1) % delta_t == 0 and state.started < sub_max:
            state.start_subsequences()
        all_done, any_growing = state.poll()
        if all_done:
            break
        if any_growing:  # else an idle step: every document waits for its next subsequence
            new = state.step_inputs(time=t - 1)
            state.take(step(new).argmax(-1))
    return state.schedules()


class Progress:
    """Algorithm 1's state for ``b`` documents, in tensors on one device (chapter 4).

    Documents start their subsequences together, so subsequence i of every document is slot i, and
    the host keeps the list of slots a step feeds (``window``): every slot started and still growing
    in some document, in order. The device holds, for those slots, which ones grow in each document
    and each one's last token (<bos> until it has one), and which documents are still open (a
    closed one starts no more subsequences). A step's tokens are the window's, a slot not growing in
    a document marked invalid there. Every update makes new tensors, so a step may keep its inputs;
    each step's window, growth, tokens and open documents are recorded as they are, and read back
    once, at the end (:meth:`schedules`).
    """

    def __init__(self, b: int, *, sub_max: int, bos: int, eos: int, device: torch.device) -> None:
        self.sub_max, self.eos, self.started, self.fresh = sub_max, eos, 0, False
        self.window: list[int] = []
        self.open = torch.ones((b, 1), dtype=torch.bool, device=device)
        self.growing = torch.zeros((b, 0), dtype=torch.bool, device=device)
        self.last = torch.zeros((b, 0), dtype=torch.long, device=device)
        self.slot = torch.zeros(0, dtype=torch.long, device=device)  # the window's slot numbers
        self.bos = torch.full((b, 1), bos, dtype=torch.long, device=device)
        self.slots = torch.arange(sub_max, device=device)
        self.record: list[tuple[list[int], torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def start_subsequences(self) -> None:
        """Every open document starts its next subsequence; all close once ``sub_max`` have started."""
        self.growing = torch.cat([self.growing, self.open], 1)
        self.last = torch.cat([self.last, self.bos], 1)
        self.slot = torch.cat([self.slot, self.slots[self.started:self.started + 1]])
        self.window, self.started, self.fresh = [*self.window, self.started], self.started + 1, True
        if self.started == self.sub_max:
            self.open = torch.zeros_like(self.open)

    def poll(self) -> tuple[bool, bool]:
        """Whether every document is done (closed, and nothing grows), and whether any subsequence grows
        at this step. The window then keeps the slots growing in some document; an idle step is
        recorded. The step's one host synchronisation."""
        any_open, *grows = torch.cat([self.open, self.growing], 1).any(0).tolist()
        if not all(grows):
            keep = [k for k, grows_here in enumerate(grows) if grows_here]
            self.growing, self.last, self.slot = (columns(x, keep) for x in (self.growing, self.last, self.slot))
            self.window = [self.window[k] for k in keep]
        if not self.window and any_open:
            self.record.append((self.window, self.growing, self.open, self.last))
        return not any_open and not self.window, bool(self.window)

    def step_inputs(self, *, time: int) -> Layout:
        """The step's input tokens: each window slot's last token, at ``time``; a slot not growing in
        a document is padding there (``valid`` False, subsequence ``PAD_SUB``)."""
        valid = self.growing
        return Layout(self.last, torch.where(valid, self.slot, PAD_SUB), torch.full_like(valid, time, dtype=torch.long),
                      valid)

    def take(self, tokens: torch.Tensor) -> None:
        """Each growing subsequence's new token: its next one, or, if it is </s>, its end. A
        subsequence started at this step that ends at once is empty, and closes its document."""
        self.record.append((self.window, self.growing, self.open, tokens))
        ends = (tokens == self.eos) & self.growing
        if self.fresh:  # the slot started at this step is the window's last, unless no document is open
            self.open = self.open > ends[:, -1:]
        self.growing, self.last, self.fresh = self.growing > ends, tokens, False

    def schedules(self) -> list[Schedule]:
        """Every document's :class:`Schedule`, from the record, read back from the device once (the
        first time-step always records: it starts a subsequence in every document)."""
        windows, growing, open_, tokens = zip(*self.record)
        edges, steps = list(accumulate((len(w) for w in windows), initial=0)), len(windows)
        n = edges[-1]
        flags = torch.cat([*growing, *open_, self.open], 1)
        schedules = []
        for row in torch.cat([flags.long(), *tokens], 1).tolist():
            grew, open_then, open_now, made = row[:n], row[n:n + steps], row[n + steps], row[n + steps + 1:]
            schedules.append(replay([(window, grew[a:z], made[a:z], not o)
                                     for window, a, z, o in zip(windows, edges, edges[1:], open_then)],
                                    closed=not open_now, eos=self.eos))
        return schedules


def columns(x: torch.Tensor, keep: Sequence[int]) -> torch.Tensor:
    """The columns ``keep`` (ascending) of ``x``'s last dimension, cut as slices: a view when they
    are one run, and made on ``x``'s device without an index tensor from the host."""
    runs: list[list[int]] = []  # [start, stop) of each run of consecutive columns
    for k in keep:
        if runs and runs[-1][1] == k:
            runs[-1][1] = k + 1
        else:
            runs.append([k, k + 1])
    parts = [x[..., a:z] for a, z in runs] or [x[..., :0]]
    return parts[0] if len(parts) == 1 else torch.cat(parts, -1)


def replay(steps: Sequence[tuple[Sequence[int], list[int], list[int], bool]], *, closed: bool, eos: int) -> Schedule:
    """One document's :class:`Schedule` from its record: at each step, the window's slots, which of
    them grew here, their tokens, and whether the document was closed. It is done at the first step
    where it is closed and nothing grows."""
    schedule = Schedule(closed=closed)
    for window, growing, tokens, closed_then in steps:
        grew = [(slot, token) for slot, grows, token in zip(window, growing, tokens) if grows]
        if closed_then and not grew:
            break
        schedule.made.append([slot for slot, _ in grew])
        for slot, token in grew:
            if slot == len(schedule.subsequences):  # its first token
                schedule.subsequences.append([])
                schedule.ended.append(False)
            if token == eos:
                schedule.ended[slot] = True
            else:
                schedule.subsequences[slot].append(token)
    return schedule


# --- The decoding steps: with a KV cache, and the uncached reference -------------------------------

def cached_step(model: T5ForConditionalGeneration, memory: CrossMemory, *, rows: int, capacity: int) -> StepFn:
    """A step that appends the new tokens' keys and values to a KV cache and recomputes nothing.

    The cache starts with room for ``capacity`` tokens per row and grows when it must. Beside it,
    each cached token's subsequence i and τ + i are kept (a few integers a token, appended each
    step), to build each step's mask and positions against them (:func:`step_bias`); T5's
    position bias is looked up in a table made once (:func:`pidutils.t5.bias_table`).
    """
    cache, table, device = KVCache.empty(model, rows, capacity), bias_table(model), model.device
    sub_k = pos_k = torch.zeros((rows, 0), dtype=torch.long, device=device)

    def step(new: Layout) -> torch.Tensor:
        nonlocal sub_k, pos_k
        pos = new.sub + new.time
        sub_k, pos_k = torch.cat([sub_k, new.sub], 1), torch.cat([pos_k, pos], 1)
        return decoder_forward(model, new.ids, memory, step_bias(table, new.sub, pos, sub_k, pos_k), cache)

    return on_device(step, device)


def uncached_step(model: T5ForConditionalGeneration, memory: CrossMemory) -> StepFn:
    """The reference: every step reruns the decoder on all tokens so far, with the full mask, and
    returns the logits of the step's new tokens."""
    seen: list[Layout] = []

    def step(new: Layout) -> torch.Tensor:
        seen.append(new)
        everything = Layout(*(torch.cat([getattr(s, name) for s in seen], dim=1)
                              for name in ("ids", "sub", "time", "valid")))
        return teacher_forced_logits(model, memory, everything)[:, -new.ids.shape[1]:]

    return on_device(step, model.device)


def scripted_step(script: Sequence[Sequence[Sequence[int]]], *, delta_t: int, eos: int, vocab_size: int) -> StepFn:
    """A stand-in model that follows a script: document d's subsequence i emits ``script[d][i]``,
    then </s> (at once for a subsequence past the script's end). It drives Algorithm 1 through the
    paper's Figure 2, and forces decoding along a target. It computes on whatever device its
    inputs are on, and carries the CPU for :func:`algorithm1`."""
    def step(new: Layout) -> torch.Tensor:
        logits = torch.zeros((*new.ids.shape, vocab_size), device=new.ids.device)
        for (d, k) in new.valid.nonzero().tolist():
            i, j = int(new.sub[d, k]), int(new.time[d, k]) - int(new.sub[d, k]) * delta_t
            tokens = list(script[d][i]) if i < len(script[d]) else []
            logits[d, k, tokens[j] if j < len(tokens) else eos] = 1.0
        return logits
    return on_device(step, "cpu")


def recording(step: StepFn, logits: list[torch.Tensor]) -> StepFn:
    """``step``, keeping in ``logits`` each step's logits of its real tokens, ``(tokens, vocab)``: the
    equivalence checks compare those (a padding token's logits are never read, and the cached and
    uncached steps need not agree on them)."""
    def record(new: Layout) -> torch.Tensor:
        out = step(new)
        logits.append(out[new.valid])
        return out
    device = getattr(step, "device", None)
    return record if device is None else on_device(record, device)


def check_request(model, tokenizer, documents) -> None:
    """Every ``ValueError`` the pipelined decoder raises, before any work."""
    check_t5(model)
    check_documents(documents)
    check_vocab(tokenizer, model)


@torch.inference_mode()
def pipelined_decode(model: T5ForConditionalGeneration, memory: CrossMemory, *, delta_t: int = 1,
                     time_max: int = TIME_MAX, sub_max: int = SUB_MAX, cached: bool = True) -> list[Schedule]:
    """The decoding phase alone: Algorithm 1 against documents already encoded into ``memory``.

    ``cached=False`` runs the uncached reference instead.
    """
    check_schedule(delta_t=delta_t, time_max=time_max, sub_max=sub_max)
    b = memory.keys[0].shape[0]
    step = cached_step(model, memory, rows=b, capacity=CACHE_START) if cached else uncached_step(model, memory)
    return algorithm1(step, b=b, delta_t=delta_t, time_max=time_max, sub_max=sub_max,
                      bos=model.config.decoder_start_token_id, eos=model.config.eos_token_id)


@torch.inference_mode()
def pipelined_generate_ids(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                           documents: Sequence[str], *, delta_t: int = 1, time_max: int = TIME_MAX,
                           sub_max: int = SUB_MAX, truncation: bool = False, cached: bool = True) -> list[Schedule]:
    """Pipelined greedy decoding of every document (Algorithm 1); the encoder runs once per document."""
    check_request(model, tokenizer, documents)
    check_schedule(delta_t=delta_t, time_max=time_max, sub_max=sub_max)
    memory = document_memory(model, tokenizer, documents, truncation=truncation)
    return pipelined_decode(model, memory, delta_t=delta_t, time_max=time_max,
                            sub_max=sub_max, cached=cached)


def schedule_states(tokenizer: PreTrainedTokenizerFast, schedules: Sequence[Schedule]) -> list[list[str]]:
    """Each document's generated subsequences, as text."""
    return [[tokenizer.decode(s).strip() for s in doc.subsequences] for doc in schedules]


def pipelined_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                       documents: Sequence[str], *, delta_t: int = 1, time_max: int = TIME_MAX,
                       sub_max: int = SUB_MAX, truncation: bool = False) -> list[list[str]]:
    """Each document's generated subsequences, as text."""
    return schedule_states(tokenizer, pipelined_generate_ids(model, tokenizer, documents, delta_t=delta_t,
                                                             time_max=time_max, sub_max=sub_max,
                                                             truncation=truncation))
