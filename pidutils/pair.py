"""The speculative pair, measured side by side (chapter 5).

One place loads the target (``seq-t5-deep``), one of the drafts (:data:`DRAFTS`: ``seq-t5-tiny``,
or the smaller, weaker ``seq-t5-mini``) and test dialogues of chapter 4's full-state task
(:func:`load_pair`), builds each way of answering them as a no-argument function to time
(:func:`runs`), measures the cost ratio c of a draft step over a target step (:func:`step_costs`),
and the acceptance rate α of the trained drafts and of unigram and bigram drafts (:func:`alpha_table`). Chapter 5 and ``python -m pidutils.bench speculative``
use it, so the book and the command agree.
"""
from __future__ import annotations

import contextlib
import copy
import json
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from . import zoo
from .bench import compare, describe
from .checks import check_choice, check_int
from .data import full_state_view, make_split, parse_state
from .metrics import joint_goal_accuracy
from .pipelined import SEQUENTIAL_SEPARATOR, document_memory, sequential_generate
from .speculative import (Sampling, acceptance_rate, autoregressive, check_pair, speculative_decode,
                          speculative_generate_ids, trim, warp)
from .t5 import KVCache, bias_table, causal_bias, decoder_forward
from .zoo import decoder_depth_as_cache_depth

MAX_NEW_TOKENS = 120  # the longest test state is about 80 tokens
TARGET, DRAFT = "seq-t5-deep", "seq-t5-tiny"
# The drafts chapter 5 compares: the trained draft, which agrees with the target almost always, and a
# smaller one trained briefly, which agrees less often (α about 0.8 greedy) and costs less.
DRAFTS = (DRAFT, "seq-t5-mini")
ALPHA_DIALOGUES = 100  # the test dialogues a draft's recorded α is measured on


@dataclass
class Pair:
    """The target and a draft (one tokenizer), and ``n`` test dialogues with their gold states."""

    target: T5ForConditionalGeneration
    draft: T5ForConditionalGeneration
    tokenizer: PreTrainedTokenizerFast
    documents: list[str]
    gold: list[list[str]]
    draft_name: str = DRAFT

    @property
    def pad(self) -> int:
        return self.tokenizer.pad_token_id

    def select(self, start: int, stop: int) -> "Pair":
        """The same models on dialogues ``start`` to ``stop - 1``."""
        return replace(self, documents=self.documents[start:stop], gold=self.gold[start:stop])

    def with_draft(self, name: str) -> "Pair":
        """The same target and dialogues with the draft ``name`` (one of :data:`DRAFTS`)."""
        return replace(self, draft=load_draft(name, self.target, self.tokenizer), draft_name=name)

    def cast(self, dtype: torch.dtype) -> "Pair":
        """The pair with copies of both models in ``dtype`` (itself if they are in it already): chapter 5
        checks exactness in float32 and times in the device's own fast dtype (:func:`pidutils.models.pick_dtype`)."""
        if self.target.dtype == dtype and self.draft.dtype == dtype:
            return self
        return replace(self, target=copy.deepcopy(self.target).to(dtype), draft=copy.deepcopy(self.draft).to(dtype))


def load_draft(name: str, target: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast) -> T5ForConditionalGeneration:
    """The draft ``name`` (:data:`DRAFTS`), on the target's device, checked to share its tokenizer."""
    check_choice("draft", name, DRAFTS)
    draft, _ = zoo.load(name, target.device)
    check_pair(target, draft, tokenizer)
    return draft


def load_pair(device: torch.device | str = "cpu", dialogues: int = 30, *, draft: str = DRAFT) -> Pair:
    """``seq-t5-deep`` and the draft ``draft`` (:data:`DRAFTS`) on ``device``, and the first ``dialogues`` test dialogues."""
    check_int("dialogues", dialogues, 1, 200)
    check_choice("draft", draft, DRAFTS)
    target, tokenizer = zoo.load(TARGET, device)
    split = zoo.test_split(TARGET).select(range(dialogues))
    view = full_state_view(split)
    return Pair(target, load_draft(draft, target, tokenizer), tokenizer, list(view["document"]),
                list(split["values"]), draft)


def target_generate_ids(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, documents: list[str],
                        sampling: Sampling = Sampling(), max_new_tokens: int = MAX_NEW_TOKENS,
                        seed: int = 0) -> torch.Tensor:
    """The target alone, end to end: encode, then one token per step (:func:`pidutils.speculative.autoregressive`)."""
    generator = torch.Generator(device=model.device).manual_seed(seed)
    memory = document_memory(model, tokenizer, documents)
    return autoregressive(model, memory, sampling, max_new_tokens, tokenizer.pad_token_id, generator)


def hugging_face_assisted(pair: Pair, documents: list[str], gamma: int, sampling: Sampling) -> torch.Tensor:
    """Hugging Face's assisted generation on the same pair, γ and warpers (its default top_k = 50 off).

    γ, its constant schedule and the confidence threshold are read from the *draft's* generation
    config (:func:`assistant_settings`); passed to the target's ``generate``, as its documentation's
    examples do, they would leave the draft at its defaults: 20 guesses cut short by a confidence
    threshold of 0.4, another algorithm.
    """
    encoded = pair.tokenizer(documents, return_tensors="pt").to(pair.target.device)
    warpers = ({"do_sample": False} if sampling.temperature == 0 else
               {"do_sample": True, "temperature": sampling.temperature, "top_k": sampling.top_k, "top_p": sampling.top_p})
    with (torch.inference_mode(), decoder_depth_as_cache_depth(pair.target, pair.draft), errors_only(),
          assistant_settings(pair.draft, num_assistant_tokens=gamma, num_assistant_tokens_schedule="constant",
                             assistant_confidence_threshold=0.0)):
        return pair.target.generate(**encoded, assistant_model=pair.draft, max_new_tokens=MAX_NEW_TOKENS, **warpers)


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


def runs(pair: Pair, gammas: Sequence[int], sampling: Sampling = Sampling(), decoding_only: bool = False,
         hugging_face: bool = True) -> dict[str, Callable[[], object]]:
    """No-argument functions that answer every dialogue one at a time (b = 1), each way.

    End to end (encoders included): ``target`` alone, ``speculative γ=g`` for each γ, and Hugging
    Face's assisted generation ``HF assisted γ=g``. With ``decoding_only=True``: the target and
    speculative decoding after the encoders, whose output is computed beforehand.
    """
    for gamma in gammas:
        check_int("gamma", gamma, 1)
    one = [[d] for d in pair.documents]
    if decoding_only:
        memories = [(document_memory(pair.target, pair.tokenizer, d), document_memory(pair.draft, pair.tokenizer, d))
                    for d in one]
        ways = {"target": lambda: [autoregressive(pair.target, mt, sampling, MAX_NEW_TOKENS, pair.pad)
                                   for mt, _ in memories]}
        for g in gammas:
            ways[f"speculative γ={g}"] = lambda g=g: [
                speculative_decode(pair.target, pair.draft, mt, md, g, sampling, MAX_NEW_TOKENS, pair.pad)
                for mt, md in memories]
        return ways
    ways = {"target": lambda: [target_generate_ids(pair.target, pair.tokenizer, d, sampling) for d in one]}
    for g in gammas:
        ways[f"speculative γ={g}"] = lambda g=g: [
            speculative_generate_ids(pair.target, pair.draft, pair.tokenizer, d, g, sampling, MAX_NEW_TOKENS)
            for d in one]
        if hugging_face:
            ways[f"HF assisted γ={g}"] = lambda g=g: [hugging_face_assisted(pair, d, g, sampling) for d in one]
    return ways


def alpha(pair: Pair, gamma: int, sampling: Sampling = Sampling(), seed: int = 0) -> tuple[float, float]:
    """α (mean β of the judged guesses) and tokens per round of speculative decoding, over the dialogues at b = 1."""
    betas, kept, rounds = [], 0, 0
    for document in pair.documents:
        _, stats = speculative_generate_ids(pair.target, pair.draft, pair.tokenizer, [document], gamma, sampling,
                                            MAX_NEW_TOKENS, seed)
        betas += stats.betas
        kept += sum(len(r.kept[0]) for r in stats.rounds)
        rounds += len(stats.rounds)
    return sum(betas) / len(betas), kept / rounds


# --- Costs: a draft step, a target step, a verification pass --------------------------------------------

def step_costs(pair: Pair, index: int = 0, repeats: int = 5) -> dict[str, float]:
    """Seconds per token of the target and of the draft decoding alone (greedy, one dialogue, after
    the encoders), their ratio c, and each encoder's seconds; the two models timed interleaved."""
    document = [pair.documents[index]]
    models = {"target": pair.target, "draft": pair.draft}
    memories = {name: document_memory(m, pair.tokenizer, document) for name, m in models.items()}
    tokens = {name: autoregressive(m, memories[name], Sampling(), MAX_NEW_TOKENS, pair.pad).shape[1]
              for name, m in models.items()}
    encoders = compare({name: lambda m=m: document_memory(m, pair.tokenizer, document) for name, m in models.items()},
                       pair.target.device, warmup=1, repeats=repeats)
    decoders = compare({name: lambda m=m, mem=memories[name]: autoregressive(m, mem, Sampling(), MAX_NEW_TOKENS, pair.pad)
                        for name, m in models.items()}, pair.target.device, warmup=1, repeats=repeats)
    costs = {}
    for name in models:
        costs[f"{name}_encoder"] = encoders[name].median
        costs[f"{name}_step"] = decoders[name].median / tokens[name]
    costs["c"] = costs["draft_step"] / costs["target_step"]
    return costs


def record_cost_ratio(device: torch.device | str = "cpu", repeats: int = 20, *, draft: str = DRAFT) -> dict:
    """Measure c for the target and the draft ``draft`` (:func:`step_costs`) and write it into the
    target's training report under ``cost_ratios[draft]``, with the draft's greedy α on the first
    :data:`ALPHA_DIALOGUES` test dialogues: ``python -m pidutils.zoo cost``. The book wants a
    target step of at least 4 draft steps on the 2-core CPU, and one draft of α 0.55 to 0.85
    (chapter 5); ``tests/test_zoo.py`` checks the recorded figures."""
    pair = load_pair(device, dialogues=ALPHA_DIALOGUES, draft=draft)
    costs = step_costs(pair, repeats=repeats)
    record = {"draft": draft, "alpha_greedy": alpha_table(pair, ngram_dialogues=1)[draft],
              "alpha_dialogues": ALPHA_DIALOGUES, "c": costs["c"], "target_over_draft": 1 / costs["c"],
              "target_step_ms": costs["target_step"] * 1e3, "draft_step_ms": costs["draft_step"] * 1e3,
              "target_encoder_ms": costs["target_encoder"] * 1e3, "draft_encoder_ms": costs["draft_encoder"] * 1e3,
              "machine": describe(device, pair.target.dtype), "command": "python -m pidutils.zoo cost"}
    report = zoo.train_report(TARGET)
    report.pop("cost_ratio", None)  # the single-draft record of earlier versions
    report["cost_ratios"] = report.get("cost_ratios", {}) | {draft: record}
    (zoo.path(TARGET) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return record


def verify_cost(pair: Pair, gamma: int, index: int = 0, context: int = 30, repeats: int = 40) -> float:
    """A target pass over γ+1 tokens, in target steps of one token, after ``context`` cached tokens
    (the two passes timed interleaved).

    The paper's speed-up formula takes it as 1; on a CPU it grows with γ.
    """
    check_int("gamma", gamma, 1)
    model = pair.target
    memory = document_memory(model, pair.tokenizer, [pair.documents[index]])
    cache, table = KVCache.empty(model, 1, context + gamma + 1), bias_table(model)
    ids = torch.full((1, context + gamma + 1), 5, device=model.device)
    valid = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        decoder_forward(model, ids[:, :context], memory, causal_bias(table, 0, context, valid[:, :context]), cache)

    def extend(new: int) -> None:
        with torch.inference_mode():
            decoder_forward(model, ids[:, context:context + new], memory,
                            causal_bias(table, context, new, valid[:, :context + new]), cache)
        cache.truncate(context)

    timings = compare({"one": lambda: extend(1), "block": lambda: extend(gamma + 1)}, model.device, warmup=2,
                      repeats=repeats)
    return timings["block"].median / timings["one"].median


# --- α: the trained drafts against unigram and bigram drafts -----------------------------------------------

def training_targets(tokenizer: PreTrainedTokenizerFast, dialogues: int = 2000) -> list[list[int]]:
    """Token ids of the first ``dialogues`` training targets (the full state as one sequence, </s> ended)."""
    recipe = zoo.RECIPES[TARGET]
    split = make_split("train", train=recipe.train_dialogues, seed=recipe.seed).select(range(dialogues))
    texts = [SEQUENTIAL_SEPARATOR.join(s) for s in full_state_view(split)["subsequences"]]
    return tokenizer(texts)["input_ids"]


def ngram_logits(sequences: list[list[int]], vocab: int, order: int, start: int) -> torch.Tensor:
    """Log-probabilities of a unigram (``order=1``: (vocab,)) or bigram (``order=2``: (vocab, vocab),
    row = previous token, the start token first) model of ``sequences``, add-one smoothed."""
    check_int("order", order, 1, 2)
    counts = torch.ones((vocab,) * order)
    for ids in sequences:
        if order == 1:
            counts += torch.bincount(torch.tensor(ids), minlength=vocab)
        else:
            previous = torch.tensor([start] + ids[:-1])
            counts.index_put_((previous, torch.tensor(ids)), torch.ones(len(ids)), accumulate=True)
    return (counts / counts.sum(-1, keepdim=True)).log()


def logits_along(model: T5ForConditionalGeneration, memory, tokens: torch.Tensor) -> torch.Tensor:
    """The model's logits at every position of ``tokens`` (1, L), teacher-forced after the start token."""
    ids = torch.cat([torch.full_like(tokens[:, :1], model.config.decoder_start_token_id), tokens[:, :-1]], 1)
    valid = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        return decoder_forward(model, ids, memory, causal_bias(bias_table(model), 0, ids.shape[1], valid))


def alpha_table(pair: Pair, sampling: Sampling = Sampling(), ngram_dialogues: int = 2000, *,
                drafts: Sequence[str] = ()) -> dict[str, float]:
    """α = E[β] of several drafts along the target's own output on the dialogues (the paper's α table).

    At each position of the target's greedy output, β = Σ min(p, q) between the target's warped
    distribution and each draft's: unigram and bigram models of the training targets, the pair's
    draft, and the shipped drafts named in ``drafts``, by name. At temperature 0, β is 1 where
    the argmaxes agree and 0 elsewhere; at T > 0 the target's greedy output stands in for the
    sampled prefixes the paper's expectation runs over.
    """
    vocab, start = pair.target.config.vocab_size, pair.target.config.decoder_start_token_id
    sequences = training_targets(pair.tokenizer, ngram_dialogues)
    unigram, bigram = ngram_logits(sequences, vocab, 1, start), ngram_logits(sequences, vocab, 2, start)
    models = {pair.draft_name: pair.draft} | {name: load_draft(name, pair.target, pair.tokenizer) for name in drafts}
    betas: dict[str, list[torch.Tensor]] = {name: [] for name in ["unigram", "bigram", *models]}
    for document in pair.documents:
        memory = document_memory(pair.target, pair.tokenizer, [document])
        tokens = trim(autoregressive(pair.target, memory, Sampling(), MAX_NEW_TOKENS, pair.pad), pair.pad)
        p = warp(logits_along(pair.target, memory, tokens)[0], sampling)
        previous = torch.cat([torch.tensor([start], device=tokens.device), tokens[0, :-1]]).cpu()
        q = {"unigram": unigram.expand(len(previous), -1), "bigram": bigram[previous]}
        q |= {name: logits_along(m, document_memory(m, pair.tokenizer, [document]), tokens)[0].cpu()
              for name, m in models.items()}
        for name, logits in q.items():
            betas[name].append(acceptance_rate(p.cpu(), warp(logits, sampling)))
    return {name: float(torch.cat(b).mean()) for name, b in betas.items()}


def jga(pair: Pair) -> dict[str, float]:
    """Joint goal accuracy of the target and of the draft, each decoding greedily alone."""
    return {name: joint_goal_accuracy([parse_state(s) for s in sequential_generate(model, pair.tokenizer,
                                                                                 pair.documents, MAX_NEW_TOKENS)],
                                      pair.gold)
            for name, model in (("target", pair.target), ("draft", pair.draft))}


def trace(pair: Pair, index: int, gamma: int, sampling: Sampling = Sampling(),
          seed: int = 0) -> list[tuple[list[str], int, str]]:
    """One dialogue's rounds as text, for :func:`pidutils.plots.speculative_trace`: each round's
    guesses, how many stood, and the target's own token (the correction, or the bonus token)."""
    _, stats = speculative_generate_ids(pair.target, pair.draft, pair.tokenizer, [pair.documents[index]], gamma,
                                        sampling, MAX_NEW_TOKENS, seed)
    eos = pair.target.config.eos_token_id
    text = lambda token: pair.tokenizer.decode([token]).strip() or pair.tokenizer.convert_ids_to_tokens(token)
    rounds = []
    for r in stats.rounds:
        guesses, stood = r.guesses[0], r.standing[0]
        if eos in guesses[:stood]:  # the output ends inside the run: nothing after its </s>
            stood = guesses.index(eos) + 1
            rounds.append(([text(t) for t in guesses[:stood]], stood, ""))
        else:
            rounds.append(([text(t) for t in guesses], stood, text(r.kept[0][-1])))
    return rounds


def disagreements(pair: Pair) -> list[int]:
    """The dialogues on which the target's and the draft's greedy outputs differ: the only places a
    greedy guess can fall."""
    outputs = [rows_without_padding(autoregressive(m, document_memory(m, pair.tokenizer, pair.documents), Sampling(),
                                           MAX_NEW_TOKENS, pair.pad), pair.pad) for m in (pair.target, pair.draft)]
    return [i for i, (a, b) in enumerate(zip(*outputs)) if a != b]


def rows_without_padding(tokens: torch.Tensor, pad: int) -> list[list[int]]:
    """Each row's tokens without the padding after its end."""
    return [[t for t in row if t != pad] for row in tokens.tolist()]
