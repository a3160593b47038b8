"""Chapter 5's drafts measured against its target: α, the cost ratio c, the verification pass, traces.

The target is ``seq-t5-deep``; the drafts (:data:`DRAFTS`) are ``seq-t5-tiny``, which agrees with it
almost always, and the smaller, weaker ``seq-t5-mini``. A speculative testbed
(:func:`load_speculative`) holds the target and one draft by role; :func:`pidutils.measure.runs`
times it with :func:`pidutils.measure.speculative_ways`. This module adds what is speculative
decoding's own to measure: α along the target's output for trained, unigram and bigram drafts
(:func:`alpha_table`), the acceptance statistics of real runs (:func:`alpha`), c
(:func:`cost_ratio`), what a verification pass costs (:func:`verify_cost`), and one dialogue's
rounds as text (:func:`trace`); and chapter 5's rows for :func:`pidutils.tables.table_of`, its
costs (:func:`cost_row`) and its speed-up at one γ (:func:`speedup_row`).
"""
from __future__ import annotations

import json
from collections.abc import Sequence

import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from . import zoo
from .bench import compare, describe, speedup
from .checks import check_choice, check_int
from .cost import speculative_speedup
from .data import full_state_view, make_split, sequential_target
from .measure import SPECULATIVE, Testbed, batch_runs, load_testbed, memories, speculative_ways, step_costs
from .speculative import Sampling, acceptance_rate, autoregressive, check_pair, speculative_generate_ids, warp
from .t5 import KVCache, bias_table, causal_bias, decoder_forward, document_memory, trim

TARGET, DRAFT = SPECULATIVE["target"], SPECULATIVE["draft"]
# The drafts chapter 5 compares: the trained draft, which agrees with the target almost always, and a
# smaller one trained briefly, which agrees less often (α about 0.8 greedy) and costs less.
DRAFTS = (DRAFT, "seq-t5-mini")
ALPHA_DIALOGUES = 100  # the test dialogues a draft's recorded α is measured on


def load_speculative(*, device: torch.device | str = "cpu", dialogues: int = 30, draft: str = DRAFT) -> Testbed:
    """The target and the draft ``draft`` (:data:`DRAFTS`) on ``device``, and the first ``dialogues``
    test dialogues."""
    check_choice("draft", draft, DRAFTS)
    bed = load_testbed({"target": TARGET, "draft": draft}, device=device, dialogues=dialogues)
    check_pair(bed["target"], bed["draft"], bed.tokenizer)
    return bed


def with_draft(bed: Testbed, name: str) -> Testbed:
    """The same target and dialogues with the draft ``name`` (one of :data:`DRAFTS`)."""
    check_choice("draft", name, DRAFTS)
    other = bed.with_model("draft", name)
    check_pair(other["target"], other["draft"], other.tokenizer)
    return other


def alpha(bed: Testbed, *, gamma: int, sampling: Sampling = Sampling(), seed: int = 0) -> tuple[float, float]:
    """α (mean β of the judged guesses) and tokens per round of speculative decoding, over the dialogues at b = 1."""
    betas, kept, rounds = [], 0, 0
    for document in bed.documents:
        _, stats = speculative_generate_ids(bed["target"], bed["draft"], bed.tokenizer, [document], gamma=gamma,
                                            sampling=sampling, seed=seed)
        betas += stats.betas
        kept += sum(len(r.kept[0]) for r in stats.rounds)
        rounds += len(stats.rounds)
    return sum(betas) / len(betas), kept / rounds


# --- Costs: a draft step, a target step, a verification pass --------------------------------------------

def cost_ratio(bed: Testbed, *, index: int = 0, repeats: int = 5) -> dict[str, float]:
    """c, a draft step over a target step (greedy, each model decoding alone after its encoder), with
    the steps' and encoders' seconds (:func:`pidutils.measure.step_costs`, the models interleaved)."""
    costs = step_costs(bed, roles=("target", "draft"), index=index, repeats=repeats)
    return {"target_step_s": costs["target"]["step_s"], "draft_step_s": costs["draft"]["step_s"],
            "target_encoder_s": costs["target"]["encoder_s"], "draft_encoder_s": costs["draft"]["encoder_s"],
            "c": costs["draft"]["step_s"] / costs["target"]["step_s"]}


def cost_row(bed: Testbed, *, index: int = 0, repeats: int = 5) -> dict[str, float | str]:
    """Chapter 5's cost table, one row per draft: :func:`cost_ratio` with the draft's name
    (``draft``), c, and the steps' and encoders' times in milliseconds (``target_step_ms``,
    ``draft_step_ms``, ``target_encoder_ms``, ``draft_encoder_ms``), for
    :func:`pidutils.tables.table_of`."""
    costs = cost_ratio(bed, index=index, repeats=repeats)
    return {"draft": bed.names["draft"], "c": costs["c"]} | {
        key.removesuffix("_s") + "_ms": seconds * 1e3 for key, seconds in costs.items() if key.endswith("_s")}


def speedup_row(bed: Testbed, *, gamma: int, c: float, sampling: Sampling = Sampling(), decoding_only: bool = False,
                hugging_face: bool = False, repeats: int = 2) -> dict[str, float | str]:
    """Chapter 5's measurement at one γ, b = 1: the target alone against speculative decoding (and,
    with ``hugging_face``, Hugging Face's assisted generation), timed interleaved on the testbed's
    dialogues (:func:`pidutils.measure.batch_runs`), end to end or the decoding phase alone; α and tokens
    per round of the same runs (:func:`alpha`); and the paper's formula at that α and the given
    ``c`` (:func:`pidutils.cost.speculative_speedup`).

    Keys: ``draft``, ``temperature``, ``gamma``, ``alpha``, ``tokens_per_round``, ``target_s``,
    ``speculative_s``, ``speedup`` (over the target alone), ``predicted`` (the formula's), and with
    ``hugging_face`` ``hf_assisted_s`` and ``vs_hf_assisted`` (speculative decoding's speed-up over
    it). The same arithmetic as a row of :func:`pidutils.experiments.speculative_draft`, for one γ
    and one kind of timing: chapter 5's slider and its paper-vs-book table.
    """
    if decoding_only and hugging_face:
        raise ValueError("hugging_face needs decoding_only=False: assisted generation has no separate decoding phase")
    ways = speculative_ways([gamma], sampling=sampling, hugging_face=hugging_face)
    timings = compare(batch_runs(bed, ways, decoding_only=decoding_only), bed.device, warmup=1, repeats=repeats)
    a, per_round = alpha(bed, gamma=gamma, sampling=sampling)
    fast = timings[f"speculative gamma={gamma}"]
    row = {"draft": bed.names["draft"], "temperature": sampling.temperature, "gamma": gamma, "alpha": a,
           "tokens_per_round": per_round, "target_s": timings["target"].median, "speculative_s": fast.median,
           "speedup": speedup(timings["target"], fast), "predicted": speculative_speedup(a, gamma, c)}
    if hugging_face:
        assisted = timings[f"HF assisted gamma={gamma}"]
        row |= {"hf_assisted_s": assisted.median, "vs_hf_assisted": speedup(assisted, fast)}
    return row


def record_cost_ratio(*, device: torch.device | str = "cpu", repeats: int = 20, draft: str = DRAFT) -> dict:
    """Measure c for the target and the draft ``draft`` (:func:`cost_ratio`) and write it into the
    target's training report under ``cost_ratios[draft]``, with the draft's greedy α on the first
    :data:`ALPHA_DIALOGUES` test dialogues: ``python -m pidutils.zoo cost``. The book wants a
    target step of at least 4 draft steps on the 2-core CPU, and one draft of α 0.55 to 0.85
    (chapter 5)."""
    bed = load_speculative(device=device, dialogues=ALPHA_DIALOGUES, draft=draft)
    costs = cost_ratio(bed, repeats=repeats)
    record = {"draft": draft, "alpha_greedy": alpha_table(bed, ngram_dialogues=1)[draft],
              "alpha_dialogues": ALPHA_DIALOGUES, "c": costs["c"], "target_over_draft": 1 / costs["c"],
              "target_step_ms": costs["target_step_s"] * 1e3, "draft_step_ms": costs["draft_step_s"] * 1e3,
              "target_encoder_ms": costs["target_encoder_s"] * 1e3, "draft_encoder_ms": costs["draft_encoder_s"] * 1e3,
              "machine": describe(device, bed["target"].dtype), "command": "python -m pidutils.zoo cost"}
    report = zoo.train_report(TARGET)
    report.pop("cost_ratio", None)  # the single-draft record of earlier versions
    report["cost_ratios"] = report.get("cost_ratios", {}) | {draft: record}
    (zoo.path(TARGET) / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return record


def verify_cost(bed: Testbed, *, gamma: int, index: int = 0, context: int = 30, repeats: int = 40) -> float:
    """A target pass over γ+1 tokens, in target steps of one token, after ``context`` cached tokens
    (the two passes timed interleaved).

    The paper's speed-up formula takes it as 1; on a CPU it grows with γ.
    """
    check_int("gamma", gamma, 1)
    model = bed["target"]
    memory = document_memory(model, bed.tokenizer, [bed.documents[index]])
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
    return tokenizer([sequential_target(s) for s in full_state_view(split)["subsequences"]])["input_ids"]


def ngram_logits(sequences: list[list[int]], *, vocab: int, order: int, start: int) -> torch.Tensor:
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


def alpha_table(bed: Testbed, *, sampling: Sampling = Sampling(), ngram_dialogues: int = 2000,
                drafts: Sequence[str] = ()) -> dict[str, float]:
    """α = E[β] of several drafts along the target's own output on the dialogues (the paper's α table).

    At each position of the target's greedy output, β = Σ min(p, q) between the target's warped
    distribution and each draft's: unigram and bigram models of the training targets, the testbed's
    draft, and the shipped drafts named in ``drafts``, by name. At temperature 0, β is 1 where
    the argmaxes agree and 0 elsewhere; at T > 0 the target's greedy output stands in for the
    sampled prefixes the paper's expectation runs over.
    """
    target = bed["target"]
    vocab, start = target.config.vocab_size, target.config.decoder_start_token_id
    sequences = training_targets(bed.tokenizer, ngram_dialogues)
    unigram = ngram_logits(sequences, vocab=vocab, order=1, start=start)
    bigram = ngram_logits(sequences, vocab=vocab, order=2, start=start)
    models = {bed.names["draft"]: bed["draft"]} | {name: with_draft(bed, name)["draft"] for name in drafts}
    betas: dict[str, list[torch.Tensor]] = {name: [] for name in ["unigram", "bigram", *models]}
    for document in bed.documents:
        memory = document_memory(target, bed.tokenizer, [document])
        tokens = autoregressive(target, memory, pad=bed.pad)
        p = warp(logits_along(target, memory, tokens)[0], sampling)
        previous = torch.cat([torch.tensor([start], device=tokens.device), tokens[0, :-1]]).cpu()
        q = {"unigram": unigram.expand(len(previous), -1), "bigram": bigram[previous]}
        q |= {name: logits_along(m, document_memory(m, bed.tokenizer, [document]), tokens)[0].cpu()
              for name, m in models.items()}
        for name, logits in q.items():
            betas[name].append(acceptance_rate(p.cpu(), warp(logits, sampling)))
    return {name: float(torch.cat(b).mean()) for name, b in betas.items()}


# --- One dialogue's rounds, and where the two models disagree ------------------------------------------

def trace(bed: Testbed, index: int, *, gamma: int, sampling: Sampling = Sampling(),
          seed: int = 0) -> list[tuple[list[str], int, str]]:
    """One dialogue's rounds as text, for :func:`pidutils.plots.speculative_trace`: each round's
    guesses, how many stood, and the target's own token (the correction, or the bonus token)."""
    _, stats = speculative_generate_ids(bed["target"], bed["draft"], bed.tokenizer, [bed.documents[index]],
                                        gamma=gamma, sampling=sampling, seed=seed)
    eos = bed["target"].config.eos_token_id
    text = lambda token: bed.tokenizer.decode([token]).strip() or bed.tokenizer.convert_ids_to_tokens(token)
    rounds = []
    for r in stats.rounds:
        guesses, stood = r.guesses[0], r.standing[0]
        if eos in guesses[:stood]:  # the output ends inside the run: nothing after its </s>
            stood = guesses.index(eos) + 1
            rounds.append(([text(t) for t in guesses[:stood]], stood, ""))
        else:
            rounds.append(([text(t) for t in guesses], stood, text(r.kept[0][-1])))
    return rounds


def disagreements(bed: Testbed) -> list[int]:
    """The dialogues on which the target's and the draft's greedy outputs differ: the only places a
    greedy guess can fall."""
    outputs = [rows_without_padding(autoregressive(bed[role], memory, pad=bed.pad), bed.pad)
               for role, memory in zip(("target", "draft"), memories(bed, ("target", "draft"), bed.documents))]
    return [i for i, (a, b) in enumerate(zip(*outputs)) if a != b]


def rows_without_padding(tokens: torch.Tensor, pad: int) -> list[list[int]]:
    """Each row's tokens without the padding after its end."""
    return [[t for t in row if t != pad] for row in trim(tokens, pad).tolist()]
