"""Is a sampler exact? A model's exact distribution over its first L tokens, and Pearson's χ² test (chapter 5).

Speculative sampling claims that every sequence it makes has the target's distribution. On a
model with a tiny vocabulary every sequence of L tokens can be enumerated, so its exact
probability is computable from the target's logits (:func:`sequence_distribution`), and the counts
of sampled sequences can be tested against it (:func:`chi_square`). For the test to cover whole
rounds, the draft must agree with the target often, so that several guesses stand in a round,
but not always, so that guesses fall and residual draws happen: :func:`perturbed` makes such a
draft from the target itself.
"""
from __future__ import annotations

import copy
import itertools

import torch
import torch.nn.functional as F
from transformers import T5ForConditionalGeneration

from .checks import check_float, check_int
from .speculative import Sampling, speculative_decode, warp
from .t5 import CrossMemory, bias_table, causal_bias, decoder_forward


def all_sequences(vocab: int, length: int, device: torch.device | str) -> torch.Tensor:
    """Every sequence of ``length`` tokens over ``vocab``, ``(vocab**length, length)``, in the order of
    their index in base ``vocab`` (the first token most significant)."""
    return torch.tensor(list(itertools.product(range(vocab), repeat=length)), device=device).view(-1, length)


def sequence_distribution(model: T5ForConditionalGeneration, memory: CrossMemory, sampling: Sampling,
                          length: int) -> torch.Tensor:
    """The exact probability of each sequence of the first ``length`` tokens the warped model makes
    for one encoded document: ``(vocab**length,)``, indexed as :func:`sequence_index` indexes samples.

    After ``</s>`` every token is ``pad``, so a sequence with anything else after its ``</s>`` has
    probability 0. One decoder pass over every prefix of ``length − 1`` tokens gives all the
    conditional distributions.
    """
    check_int("length", length, 1, 6)
    config = model.config
    vocab, eos, pad = config.vocab_size, config.eos_token_id, config.pad_token_id
    sequences = all_sequences(vocab, length, model.device)
    prefixes = torch.cat([torch.full_like(sequences[::vocab, :1], config.decoder_start_token_id),
                          sequences[::vocab, :-1]], 1)  # each prefix once: the last token varies fastest
    valid = torch.ones_like(prefixes, dtype=torch.bool)
    with torch.inference_mode():
        logits = decoder_forward(model, prefixes, memory.repeated(len(prefixes)),
                                 causal_bias(bias_table(model), 0, length, valid))
    probs = warp(logits.double(), sampling).repeat_interleave(vocab, 0)  # (sequences, length, vocab)
    chosen = probs.gather(2, sequences[:, :, None])[..., 0]
    ended = F.pad((sequences == eos).cumsum(1)[:, :-1] > 0, (1, 0))  # a </s> came before this token
    factor = torch.where(ended, (sequences == pad).double(), chosen)
    return factor.prod(1)


def sequence_index(tokens: torch.Tensor, vocab: int, length: int, pad: int) -> torch.Tensor:
    """Each row's first ``length`` tokens as one number in base ``vocab`` (a missing token counts as ``pad``)."""
    padded = F.pad(tokens[:, :length], (0, max(0, length - tokens.shape[1])), value=pad)
    weights = vocab ** torch.arange(length - 1, -1, -1, device=tokens.device)
    return (padded * weights).sum(1)


def chi_square(counts: torch.Tensor, probs: torch.Tensor, min_expected: float = 5.0) -> tuple[float, int, float]:
    """Pearson's goodness-of-fit test of ``counts`` against ``probs``: (statistic, degrees of freedom,
    p-value). Cells expected fewer than ``min_expected`` times are pooled into one, as the χ²
    approximation asks; a count in a cell of probability zero gives p-value 0."""
    counts, probs = counts.double().cpu(), probs.double().cpu()
    if bool((counts[probs == 0] > 0).any()):
        return float("inf"), 0, 0.0
    expected = probs * counts.sum()
    small = expected < min_expected
    observed = torch.cat([counts[~small], counts[small].sum()[None]])
    expected = torch.cat([expected[~small], expected[small].sum()[None]])
    keep = expected > 0
    statistic = float(((observed[keep] - expected[keep]) ** 2 / expected[keep]).sum())
    df = int(keep.sum()) - 1
    return statistic, df, float(torch.special.gammaincc(torch.tensor(df / 2), torch.tensor(statistic / 2)))


def perturbed(model: T5ForConditionalGeneration, *, scale: float, seed: int = 0) -> T5ForConditionalGeneration:
    """A copy of ``model`` with Gaussian noise of ``scale`` times each weight tensor's own standard
    deviation added to it: a draft that agrees with ``model`` often, but not always."""
    check_float("scale", scale, 0.0)
    generator = torch.Generator().manual_seed(seed)
    noisy = copy.deepcopy(model)
    with torch.no_grad():
        for weight in noisy.parameters():
            noise = torch.randn(weight.shape, generator=generator).to(weight.device, weight.dtype)
            weight.add_(noise * weight.std() * scale if weight.numel() > 1 else 0)
    return noisy.eval()


def speculative_samples(target: T5ForConditionalGeneration, draft: T5ForConditionalGeneration,
                        target_memory: CrossMemory, draft_memory: CrossMemory, gamma: int, sampling: Sampling,
                        length: int, batches: int, generator: torch.Generator) -> tuple[torch.Tensor, dict[str, int]]:
    """``batches`` speculative runs of ``length`` tokens over the rows of the memories (one batch each):
    the tokens, ``(batches, rows, length)``, and counts of what the rounds did: ``rounds``; ``fallen``,
    rows' guesses that fell; ``long_runs``, rows that kept 3 or more tokens from one round."""
    check_int("batches", batches, 1)
    runs, counts = [], {"rounds": 0, "fallen": 0, "long_runs": 0}
    for _ in range(batches):
        tokens, stats = speculative_decode(target, draft, target_memory, draft_memory, gamma=gamma, sampling=sampling,
                                           max_new_tokens=length, pad=target.config.pad_token_id, generator=generator)
        runs.append(F.pad(tokens, (0, length - tokens.shape[1]), value=target.config.pad_token_id))
        for r in stats.rounds:
            counts["rounds"] += 1
            counts["fallen"] += sum(n < len(g) for n, g, kept in zip(r.standing, r.guesses, r.kept) if kept)
            counts["long_runs"] += sum(len(kept) >= 3 for kept in r.kept)
    return torch.stack(runs), counts
