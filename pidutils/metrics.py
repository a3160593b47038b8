"""Dialogue-state-tracking metrics, as in MultiWOZ (chapter 2).

Joint goal accuracy (JGA): the share of dialogues whose *whole* state (all U slots) is right.
Slot accuracy: the share of (dialogue, slot) pairs that are right.
"""
from __future__ import annotations

from collections.abc import Sequence

from .checks import check_int


def _check(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> None:
    if len(predicted) != len(gold) or not gold:
        raise ValueError(f"predicted and gold must hold the same number (>= 1) of dialogues, "
                         f"got {len(predicted)} and {len(gold)}")
    for p, g in zip(predicted, gold):
        if len(p) != len(g):
            raise ValueError(f"each dialogue must have as many predicted values as gold ones, got {len(p)} and {len(g)}")


def joint_goal_accuracy(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> float:
    """Share of dialogues whose every slot value matches the gold one."""
    _check(predicted, gold)
    return sum(list(p) == list(g) for p, g in zip(predicted, gold)) / len(gold)


def slot_accuracy(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]]) -> float:
    """Share of (dialogue, slot) values that match."""
    _check(predicted, gold)
    pairs = [(a, b) for p, g in zip(predicted, gold) for a, b in zip(p, g)]
    return sum(a == b for a, b in pairs) / len(pairs)


def per_slot_accuracy(predicted: Sequence[Sequence[str]], gold: Sequence[Sequence[str]],
                      slots: Sequence[Sequence[str]]) -> dict[str, float]:
    """Each slot's share of dialogues whose value for it matches (chapter 8: the slots lost first);
    ``slots[i]`` names dialogue i's slots in the order of its values."""
    _check(predicted, gold)
    _check(slots, gold)
    right: dict[str, list[bool]] = {}
    for p, g, names in zip(predicted, gold, slots):
        for a, b, name in zip(p, g, names):
            right.setdefault(name, []).append(a == b)
    return {name: sum(hits) / len(hits) for name, hits in right.items()}


def evaluate(predict, split, batch_size: int = 8) -> dict[str, float]:
    """JGA and slot accuracy of ``predict(documents, prompts) -> answers`` on a data split.

    ``split`` has the columns of :func:`pidutils.data.make_dataset` (dialogue, slots, values).
    """
    check_int("batch_size", batch_size, 1)
    predicted, gold = [], []
    for start in range(0, len(split), batch_size):
        rows = split[start:start + batch_size]
        predicted += predict(rows["dialogue"], rows["slots"])
        gold += rows["values"]
    return {"jga": joint_goal_accuracy(predicted, gold), "slot_accuracy": slot_accuracy(predicted, gold)}
