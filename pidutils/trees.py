"""Chapter 6's heads and trees measured on their target: tokens per pass, a round's cost, speed-ups.

The target is chapter 5's, ``seq-t5-deep``, and the heads are the shipped ``medusa-seq-t5-deep``
(:data:`pidutils.zoo.HEAD_RECIPES`). A Medusa testbed holds the target and chapter 5's trained
draft by role, so that Medusa and draft-model speculative decoding run on the same target and
dialogues, and Medusa-2's body (``medusa2-seq-t5-deep``, trained with its heads) in role
``medusa-2``; :func:`pidutils.measure.batch_runs` times it with :func:`pidutils.measure.medusa_way`.
This module adds what is Medusa's own to measure: the tokens a pass makes (:func:`tokens_per_pass`),
what a round costs in target steps (:func:`round_cost`), the speed-up the heads' accuracies predict
(:func:`predicted_speedup`), and one measured point of chapter 6's slider (:func:`speedup_row`).
"""
from __future__ import annotations

from collections.abc import Sequence

import torch

from .bench import compare, speedup
from .drafts import load_speculative
from .measure import Testbed, batch_runs, medusa_way, sequential_way
from .medusa import (Heads, Round, Tree, Typical, accuracy_tree, expected_tokens, guesses, heads_report, load_heads,
                     medusa_generate_ids, tree_bias, tree_layout)
from .t5 import KVCache, bias_table, causal_bias, decoder_states, document_memory, lm_logits

HEADS = "medusa-seq-t5-deep"
MEDUSA2 = "medusa2-seq-t5-deep"  # Medusa-2: heads trained with the body, which it holds (role "medusa-2")
TREE_SIZE = 8  # nodes of the tree chapter 6 decodes with unless asked otherwise: near the best on the 2-core CPU


def load_medusa(*, device: torch.device | str = "cpu", dialogues: int = 20) -> tuple[Testbed, Heads]:
    """Chapter 5's target and trained draft on ``device`` with the first ``dialogues`` test
    dialogues, Medusa-2's body in role ``medusa-2``, and the shipped Medusa-1 heads."""
    bed = load_speculative(device=device, dialogues=dialogues).with_model("medusa-2", MEDUSA2)
    return bed, load_heads(HEADS, device=device)


def calibration(heads: str = HEADS) -> list[list[float]]:
    """acc[k][i]: head k's top-(i+1) accuracy on the validation dialogues, from the ``heads``' report."""
    return heads_report(heads)["validation_accuracy"]


def tree_of(*, k: int, size: int = TREE_SIZE, heads: str = HEADS) -> Tree:
    """The best tree of at most ``size`` nodes over the first ``k`` of the shipped ``heads``
    (:func:`pidutils.medusa.accuracy_tree`)."""
    return accuracy_tree(calibration(heads)[:k], size=size)


def tokens_per_pass(bed: Testbed, heads: Heads, *, tree: Sequence[Sequence[int]], typical: Typical | None = None,
                    role: str = "target") -> float:
    """Tokens Medusa makes per pass of the model in ``role``, ``</s>`` included, over the testbed's
    dialogues one at a time (the first pass, on the start token, counted too)."""
    made = passes = 0
    for document in bed.documents:
        tokens, stats = medusa_generate_ids(bed[role], heads, bed.tokenizer, [document], tree=tree, typical=typical)
        made, passes = made + int((tokens != bed.pad).sum()), passes + stats.passes
    return made / passes


def round_cost(bed: Testbed, heads: Heads, *, tree: Sequence[Sequence[int]], index: int = 0, context: int = 30,
               repeats: int = 40, role: str = "target") -> float:
    """A Medusa round in steps of the model in ``role``: the tree's pass, its LM head and the heads'
    guesses at one position, against a one-token step with its LM head, after ``context`` cached
    tokens (timed interleaved). Rolling the cache back is left out: the gather moves a few tokens' keys."""
    model, layout = bed[role], tree_layout(tree, device=bed.device)
    memory = document_memory(model, bed.tokenizer, [bed.documents[index]])
    cache, table = KVCache.empty(model, 1, context + layout.nodes), bias_table(model)
    ids = torch.full((1, context + layout.nodes), 5, device=model.device)
    valid = torch.ones_like(ids, dtype=torch.bool)
    with torch.inference_mode():
        decoder_states(model, ids[:, :context], memory, causal_bias(table, 0, context, valid[:, :context]), cache)

    def one() -> None:
        with torch.inference_mode():
            states = decoder_states(model, ids[:, context:context + 1], memory,
                                    causal_bias(table, context, 1, valid[:, :context + 1]), cache)
            lm_logits(model, states).argmax(-1)
        cache.truncate(context)

    def tree_round() -> None:
        with torch.inference_mode():
            states = decoder_states(model, ids[:, context:], memory, tree_bias(table, layout, context), cache)
            lm_logits(model, states).argmax(-1)
            guesses(heads, states[:, 0], layout)
        cache.truncate(context)

    timings = compare({"one": one, "tree": tree_round}, model.device, warmup=2, repeats=repeats)
    return timings["tree"].median / timings["one"].median


def predicted_speedup(tree: Sequence[Sequence[int]], acc: Sequence[Sequence[float]], *, cost: float) -> float:
    """The decoding phase's speed-up the accuracies predict: a round's expected tokens
    (:func:`pidutils.medusa.expected_tokens`, heads taken as independent) over its cost in target steps."""
    return expected_tokens(tree, acc) / cost


def speedup_row(bed: Testbed, heads: Heads, *, k: int, size: int, repeats: int = 2) -> dict[str, float]:
    """Chapter 6's slider at one K and tree size, b = 1, the decoding phase: the target alone against
    Medusa timed interleaved, the tokens per pass, the round's cost and the accuracies' prediction.

    Keys: ``k``, ``size`` (the tree's nodes), ``tokens_per_pass``, ``expected_tokens``, ``cost``,
    ``target_s``, ``medusa_s``, ``speedup`` and ``predicted``.
    """
    acc = calibration()
    tree = tree_of(k=k, size=size)
    ways = {"target": sequential_way("target"), "medusa": medusa_way(heads, tree=tree)}
    timings = compare(batch_runs(bed, ways, decoding_only=True), bed.device, warmup=1, repeats=repeats)
    cost = round_cost(bed, heads, tree=tree)
    return {"k": k, "size": len(tree), "tokens_per_pass": tokens_per_pass(bed, heads, tree=tree),
            "expected_tokens": expected_tokens(tree, acc[:k]), "cost": cost, "target_s": timings["target"].median,
            "medusa_s": timings["medusa"].median, "speedup": speedup(timings["target"], timings["medusa"]),
            "predicted": predicted_speedup(tree, acc[:k], cost=cost)}


def trace(bed: Testbed, heads: Heads, index: int, *, tree: Sequence[Sequence[int]],
          typical: Typical | None = None) -> list[Round]:
    """Every round Medusa makes on dialogue ``index`` alone (:class:`pidutils.medusa.Round`)."""
    _, stats = medusa_generate_ids(bed["target"], heads, bed.tokenizer, [bed.documents[index]], tree=tree,
                                   typical=typical)
    return stats.rounds(0)


def node_kinds(tree: Sequence[Sequence[int]], played: Round) -> list[str]:
    """How each node of a round fared, for :func:`pidutils.plots.candidate_tree`: ``root``,
    ``accepted`` (on the winning branch), ``stood`` (it and its ancestors stood, but a deeper branch
    won), ``fell`` (its ancestors stood, it did not), or ``node`` (an ancestor fell: never judged)."""
    paths = ((), *tree)
    index = {p: i for i, p in enumerate(paths)}
    winner = set(paths[played.best][:d] for d in range(len(paths[played.best]) + 1))
    kinds = []
    for p in paths:
        ancestors_stood = all(played.stood[index[p[:d]]] for d in range(len(p)))
        kinds.append("root" if not p else "accepted" if p in winner else
                     ("stood" if played.stood[index[p]] else "fell") if ancestors_stood else "node")
    return kinds
