"""One training loop for every model in the book (chapter 2; chapter 3 trains PID with it too).

AdamW or Adafactor (T5's own optimizer, whose steps scale with each weight's size) with linear
warm-up and linear decay, seeds, gradient clipping, a tqdm progress bar with the
loss, periodic validation, and a report of wall time and estimated training FLOPs (for the PID
paper's Table 5 comparison of training costs).
"""
from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from tqdm.auto import tqdm

from .checks import check_choice, check_float, check_int

OPTIMIZERS = ("adamw", "adafactor")


@dataclass
class TrainReport:
    """What a training run did and cost."""

    steps: int
    wall_seconds: float
    flops: float
    final_loss: float
    losses: list[float] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)


def _schedule(step: int, steps: int, warmup: int) -> float:
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


def train(model: torch.nn.Module, next_batch: Callable[[random.Random], dict],
          batch_flops: Callable[[dict], float], *, steps: int, lr: float = 1e-3, warmup: int = 100,
          clip: float = 1.0, seed: int = 0, validate: Callable[[torch.nn.Module], dict] | None = None,
          validate_every: int = 500, progress: bool = True,
          loss_fn: Callable[[torch.nn.Module, dict], torch.Tensor] | None = None,
          optimizer: str = "adamw") -> TrainReport:
    """Train ``model`` for ``steps`` steps on batches from ``next_batch(rng)``.

    ``next_batch`` returns keyword arguments for ``model(**batch)`` (with ``labels``);
    ``batch_flops(batch)`` estimates one step's training FLOPs (see
    :func:`pidutils.cost.training_flops`); ``loss_fn(model, batch)`` replaces ``model(**batch).loss``
    (PID trains with :func:`pidutils.pid.pid_loss`); ``optimizer`` is one of :data:`OPTIMIZERS`.
    Batches move to the model's device.
    """
    check_int("steps", steps, 1)
    check_int("warmup", warmup, 0)
    check_int("validate_every", validate_every, 1)
    check_float("lr", lr, 0.0, low_inclusive=False)
    check_float("clip", clip, 0.0, low_inclusive=False)
    check_choice("optimizer", optimizer, OPTIMIZERS)
    rng = random.Random(seed)
    device = next(model.parameters()).device
    torch.manual_seed(seed)
    opt = (torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01) if optimizer == "adamw"
           else torch.optim.Adafactor(model.parameters(), lr=lr))
    scheduler = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: _schedule(s, steps, warmup))
    report = TrainReport(steps=steps, wall_seconds=0.0, flops=0.0, final_loss=float("nan"))
    start = time.perf_counter()
    bar = tqdm(range(steps), disable=not progress, desc="training")
    for step in bar:
        model.train()
        batch = {k: v.to(device) for k, v in next_batch(rng).items()}
        loss = loss_fn(model, batch) if loss_fn is not None else model(**batch).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        scheduler.step()
        report.flops += batch_flops(batch)
        report.losses.append(loss.item())
        bar.set_postfix(loss=f"{loss.item():.4f}")
        if validate is not None and ((step + 1) % validate_every == 0 or step + 1 == steps):
            model.eval()
            with torch.no_grad():
                metrics = {"step": step + 1, **validate(model)}
            report.validation.append(metrics)
            bar.write(f"step {step + 1}: " + ", ".join(f"{k}={v:.4f}" for k, v in metrics.items() if k != "step"))
    model.eval()
    report.wall_seconds = time.perf_counter() - start
    report.final_loss = sum(report.losses[-50:]) / len(report.losses[-50:])
    return report
