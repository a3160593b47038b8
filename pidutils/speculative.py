"""Speculative decoding (Leviathan, Kalman and Matias 2023): a draft proposes γ tokens, the target checks them (chapter 5).

One round, for rows that share a length:

1. **Draft.** The small model M_q samples γ guesses x_1..x_γ one at a time from its warped
   distributions q_1..q_γ (:func:`warp`, :func:`draw`).
2. **Verify.** The target M_p runs once on the last token and the γ guesses, and gives p_1..p_{γ+1}.
3. **Accept** (:func:`accept`). With r_i ~ U(0, 1), guess i stands while r_i < p_i(x_i) / q_i(x_i);
   n is the number standing before the first that falls. The next token comes from
   norm(max(0, p_{n+1} − q_{n+1})), or from p_{γ+1} when all γ stood. Every token so made has the
   target's distribution exactly; greedy decoding is the case where p and q put all their mass on
   their argmax, and a guess stands when it is the target's argmax.
4. **Roll back.** Both models keep a self-attention KV cache (:class:`pidutils.t5.KVCache`); the
   positions of fallen guesses are dropped by resetting the cache's length. The cross-attention
   keys and values, computed once per document by each model, are never touched.

A batch of b rows shares one cache length, so every row keeps the batch's shortest run of
standing guesses m, plus one token: its own correction if its run is that short, otherwise its
guess m+1, which stood. Keeping a prefix of standing tokens chosen independently of what follows
changes no row's distribution, so every row is still exact; rows only lose speed to the others.
A row whose run holds ``</s>`` is finished and no longer holds the others back.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .checks import check_documents, check_float, check_int
from .sequential import MAX_NEW_TOKENS, sequential_decode
from .t5 import (CrossMemory, KVCache, argmax_pick, bias_table, causal_bias, check_t5, decode_loop, decoder_forward,
                 document_memory, pad_after_eos, trim)
from .tokenizer import check_vocab

GAMMA = 5  # guesses per round unless asked otherwise: near the best on the 2-core CPU (chapter 5)


# --- Sampling: the warpers, applied identically to p and q -----------------------------------------

@dataclass(frozen=True)
class Sampling:
    """How a token is chosen from logits: temperature (0 is greedy), then top-k (0: off), then top-p.

    The same order as Hugging Face's warpers; speculative decoding applies the very same warping
    to the draft's and the target's logits, so that it samples the warped target distribution.
    """

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0

    def __post_init__(self) -> None:
        check_float("temperature", self.temperature, 0.0)
        check_int("top_k", self.top_k, 0)
        check_float("top_p", self.top_p, 0.0, 1.0, low_inclusive=False)


def warp(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The distribution ``sampling`` draws from, ``(..., vocab)``: one-hot on the argmax at temperature 0,
    else the softmax of logits/T over the top-k tokens, cut to the smallest set holding top-p of the mass."""
    if sampling.temperature == 0:
        return F.one_hot(logits.argmax(-1), logits.shape[-1]).to(logits.dtype)
    logits = logits / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.shape[-1]), dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        before = sorted_logits.softmax(-1).cumsum(-1) - sorted_logits.softmax(-1)  # mass of the tokens ahead
        drop = (before >= sampling.top_p).scatter(-1, order, before >= sampling.top_p)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits.softmax(-1)


def draw(probs: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """One token from each distribution of ``probs`` ``(..., vocab)``."""
    flat = probs.reshape(-1, probs.shape[-1])
    return torch.multinomial(flat, 1, generator=generator).view(probs.shape[:-1])


def choose(logits: torch.Tensor, sampling: Sampling,
           generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One token from each row of ``logits`` ``(..., vocab)`` as ``sampling`` says, and the warped
    distribution it was drawn from: at temperature 0 the argmax, and no distribution (it is one-hot
    on that token; the greedy loop skips building it and uses no random number)."""
    if sampling.temperature == 0:
        return logits.argmax(-1), None
    probs = warp(logits, sampling)
    return draw(probs, generator), probs


# --- The accept/reject rule ---------------------------------------------------------------------------

def accept(p: torch.Tensor, q: torch.Tensor, guesses: torch.Tensor, r: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The paper's rule, per row: how many guesses stand, and the distribution of the token after them.

    ``p`` (rows, γ+1, vocab): the target's distributions at the γ guesses and after them; ``q``
    (rows, γ, vocab): the draft's; ``guesses`` (rows, γ); ``r`` (rows, γ): uniforms in [0, 1).
    Guess i stands while r_i · q_i(x_i) < p_i(x_i), that is with probability min(1, p/q). Returns n
    (rows,), the guesses standing before the first that falls, and (rows, vocab) the distribution
    of the next token: norm(max(0, p_{n+1} − q_{n+1})), which is p_{γ+1} itself when n = γ (q is
    taken as zero there).
    """
    rows, gamma = guesses.shape
    p_x = p[:, :gamma].gather(-1, guesses[..., None])[..., 0]
    q_x = q.gather(-1, guesses[..., None])[..., 0]
    falls = torch.cat([r * q_x >= p_x, torch.ones((rows, 1), dtype=torch.bool, device=p.device)], dim=1)
    n = falls.int().argmax(1)  # the first that falls; the appended column makes it γ if none does
    at = torch.arange(rows, device=p.device)
    q_next = torch.cat([q, torch.zeros_like(p[:, :1])], dim=1)[at, n]
    residual = (p[at, n] - q_next).clamp_min(0)
    return n, residual / residual.sum(-1, keepdim=True)


def accept_greedy(choices: torch.Tensor, guesses: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`accept` at temperature 0, where p and q are one-hot: guess i stands while it is the
    target's argmax. ``choices`` (rows, γ+1): the target's argmax at the γ guesses and after them.
    Returns n (rows,) and the token after the run: the target's argmax there, the correction (or,
    when all stood, the target's own next token)."""
    rows, gamma = guesses.shape
    falls = torch.cat([guesses != choices[:, :gamma], torch.ones((rows, 1), dtype=torch.bool, device=guesses.device)], 1)
    n = falls.int().argmax(1)
    return n, choices.gather(1, n[:, None])[:, 0]


def judge(logits: torch.Tensor, q: torch.Tensor | None, guesses: torch.Tensor, sampling: Sampling,
          generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The target's verdict on a round from its logits (rows, γ+1, vocab): n, each row's token after
    its run, and β of each guess (rows, γ). Greedy (``q`` is None) by :func:`accept_greedy`; else
    :func:`accept` with uniforms r_i, then a draw from the distribution it returns."""
    gamma = guesses.shape[1]
    if q is None:
        choices = logits.argmax(-1)
        n, after = accept_greedy(choices, guesses)
        return n, after, (guesses == choices[:, :gamma]).to(logits.dtype)
    p = warp(logits, sampling)
    n, next_dist = accept(p, q, guesses, torch.rand(guesses.shape, generator=generator, device=guesses.device))
    return n, draw(next_dist, generator), acceptance_rate(p[:, :gamma], q)


def rule_distribution(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """The distribution of the token the rule makes at one position, in closed form (p and q:
    (vocab,)). A guess x ~ q stands with probability min(1, p(x)/q(x)); otherwise the token comes
    from the residual that :func:`accept` returns for a guess that fell. Summed over x, that is
    min(p, q) + (1 − Σ min(p, q)) · norm(max(0, p − q)) = p: chapter 5 checks it."""
    stand = torch.clamp(p / q, max=1)
    can_fall = (stand < 1).nonzero()
    if not len(can_fall):  # p = q: every guess stands
        return q * stand
    r = torch.tensor([[1.0 - 1e-12]], dtype=p.dtype, device=p.device)  # just below 1: that guess falls
    _, residual = accept(p[None, None].expand(1, 2, -1), q[None, None], can_fall[:1].T, r)
    return q * stand + (q * (1 - stand)).sum() * residual[0]


def acceptance_rate(p: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """β = Σ_x min(p(x), q(x)): the probability that a guess drawn from q stands (the paper's α is its mean)."""
    return torch.minimum(p, q).sum(-1)


# --- Decoding -----------------------------------------------------------------------------------------

@dataclass
class Round:
    """One round of every row: its guesses, how many stood (n), and the tokens it kept: m+1, or fewer
    when its output ended (up to its ``</s>``; none in a row that had ended before)."""

    guesses: list[list[int]]
    standing: list[int]
    kept: list[list[int]]


@dataclass
class Stats:
    """What a speculative run measured: rounds, tokens kept per row, and the acceptance probabilities
    β of every judged guess (the paper's α is their mean).

    The decoding loop only adds each round's tensors (:meth:`add`), on the device, so that keeping
    the statistics adds no host synchronisation to the rounds being timed; they are read back to
    Python lists once, when :attr:`rounds` or :attr:`betas` is first asked for.
    """

    pending: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)
    eos: int = 1
    _rounds: list[Round] = field(default_factory=list, repr=False)
    _betas: list[float] = field(default_factory=list, repr=False)

    def add(self, guesses: torch.Tensor, n: torch.Tensor, betas: torch.Tensor, judged: torch.Tensor,
            kept: torch.Tensor, m: torch.Tensor, was_done: torch.Tensor) -> None:
        """Keep one round's tensors: guesses, n, β, which β were judged, the tokens kept (the first
        m+1 of each row), and which rows were done before it (none is changed later by the loop)."""
        self.pending.append((guesses, n, betas, judged, kept, m, was_done))

    def _read_back(self) -> None:
        for guesses, n, betas, judged, kept, m, was_done in self.pending:
            self._betas += betas[judged].tolist()
            width = int(m) + 1
            rows = [[] if done else row[:row.index(self.eos) + 1] if self.eos in row else row
                    for row, done in zip(kept[:, :width].tolist(), was_done.tolist())]
            self._rounds.append(Round(guesses.tolist(), n.tolist(), rows))
        self.pending.clear()

    @property
    def rounds(self) -> list[Round]:
        """Every round, in order (:class:`Round`)."""
        self._read_back()
        return self._rounds

    @property
    def betas(self) -> list[float]:
        """β of every judged guess of the rows still decoding, round by round."""
        self._read_back()
        return self._betas

    @property
    def alpha(self) -> float:
        """Mean acceptance probability of the judged guesses (1.0 if none was judged)."""
        return sum(self.betas) / len(self.betas) if self.betas else 1.0


def check_pair(target: T5ForConditionalGeneration, draft: T5ForConditionalGeneration,
               tokenizer: PreTrainedTokenizerFast, draft_tokenizer: PreTrainedTokenizerFast | None = None) -> None:
    """Both models T5 encoder-decoders, with one vocabulary, one tokenizer and the same special tokens."""
    check_t5(target)
    check_t5(draft)
    check_vocab(tokenizer, target)
    if draft.config.vocab_size != target.config.vocab_size:
        raise ValueError(f"draft and target must share one vocabulary: the target has "
                         f"{target.config.vocab_size} tokens, the draft {draft.config.vocab_size}")
    if draft_tokenizer is not None and draft_tokenizer.get_vocab() != tokenizer.get_vocab():
        raise ValueError("draft_tokenizer must be the target's tokenizer: their vocabularies differ")
    for name in ("decoder_start_token_id", "eos_token_id", "pad_token_id"):
        if getattr(draft.config, name) != getattr(target.config, name):
            raise ValueError(f"draft and target must share {name}: {getattr(draft.config, name)} "
                             f"against {getattr(target.config, name)}")


def check_speculation(*, gamma: int, max_new_tokens: int) -> None:
    """γ and max_new_tokens must each be at least 1."""
    check_int("gamma", gamma, 1)
    check_int("max_new_tokens", max_new_tokens, 1)


def step(model: T5ForConditionalGeneration, memory: CrossMemory, table: torch.Tensor, ids: torch.Tensor,
         cache: KVCache) -> torch.Tensor:
    """Run ``model`` on ``ids`` (rows, new) after its cache: the logits (rows, new, vocab)."""
    valid = torch.ones((ids.shape[0], cache.length + ids.shape[1]), dtype=torch.bool, device=ids.device)
    return decoder_forward(model, ids, memory, causal_bias(table, cache.length, ids.shape[1], valid), cache)


@torch.inference_mode()
def speculative_decode(target: T5ForConditionalGeneration, draft: T5ForConditionalGeneration,
                       target_memory: CrossMemory, draft_memory: CrossMemory, *, gamma: int = GAMMA,
                       sampling: Sampling = Sampling(), max_new_tokens: int = MAX_NEW_TOKENS, pad: int,
                       generator: torch.Generator | None = None) -> tuple[torch.Tensor, Stats]:
    """The decoding phase alone, for documents each model has already encoded into its memory.

    Returns the tokens (rows, length), ``pad`` after each row's ``</s>``, and the run's :class:`Stats`.
    A round reads one pair of numbers back to the host: m, and whether every row is done.
    """
    check_speculation(gamma=gamma, max_new_tokens=max_new_tokens)
    rows, device = target_memory.keys[0].shape[0], target.device
    eos = target.config.eos_token_id
    tokens = torch.full((rows, max_new_tokens + 1), pad, device=device)
    tokens[:, 0] = target.config.decoder_start_token_id
    length, finished = 1, False  # tokens so far, the start token included; each cache holds all but the last
    target_cache, draft_cache = (KVCache.empty(m, rows, max_new_tokens + 1) for m in (target, draft))
    target_table, draft_table = bias_table(target), bias_table(draft)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    stats = Stats(eos=eos)
    while length <= max_new_tokens and not finished:
        g = min(gamma, max_new_tokens - length)  # the last token of the budget comes from the target alone
        guesses, q = propose(draft, draft_memory, draft_table, draft_cache, tokens[:, :length], g=g,
                             sampling=sampling, generator=generator)
        block = torch.cat([tokens[:, length - 1:length], guesses], dim=1)
        logits = step(target, target_memory, target_table, block, target_cache)
        n, after, betas = judge(logits, q, guesses, sampling, generator)
        m = shortest_run(n, guesses, done, eos=eos)
        kept = kept_tokens(guesses, n, m, after, pad=pad)
        record(stats, guesses, n, betas, done=done, kept=kept, m=m, eos=eos)
        kept = pad_after_eos(kept, done, eos=eos, pad=pad)
        m, finished = (int(x) for x in torch.stack([m, done.all().long()]).tolist())
        tokens[:, length:length + m + 1] = kept[:, :m + 1]
        length += m + 1
        target_cache.truncate(length - 1)
        draft_cache.truncate(min(draft_cache.length, length - 1))
    return trim(tokens[:, 1:length], pad), stats


def propose(draft: T5ForConditionalGeneration, memory: CrossMemory, table: torch.Tensor, cache: KVCache,
            tokens: torch.Tensor, *, g: int, sampling: Sampling,
            generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The draft's g guesses (rows, g), one step each through the engine's greedy loop
    (:func:`pidutils.t5.decode_loop`), and their distributions (rows, g, vocab; None when greedy,
    where they are one-hot).

    The first step also feeds whatever the draft has not seen yet: the last token, and the last
    guess of a round in which every guess stood. The draft does not stop at its ``</s>``: waiting
    for it would read a number back at every guess, and the target judges nothing after it.
    """
    ids = tokens[:, cache.length:]
    valid = torch.ones((ids.shape[0], tokens.shape[1]), dtype=torch.bool, device=ids.device)
    guesses, _, q = decode_loop(draft, memory, cache, table, ids, valid, steps=g,
                                pick=lambda logits: choose(logits, sampling, generator), stop_at_eos=False)
    rows = tokens.shape[0]
    stacked = torch.stack(guesses, 1) if guesses else tokens.new_zeros((rows, 0))  # g = 0: none
    if sampling.temperature == 0:
        return stacked, None
    return stacked, torch.stack(q, 1) if q else torch.zeros((rows, 0, draft.config.vocab_size), device=tokens.device)


def after_eos(guesses: torch.Tensor, eos: int) -> torch.Tensor:
    """Where a row's guesses come after its first ``</s>`` guess: nothing there can be kept."""
    is_eos = (guesses == eos).int()
    return (is_eos.cumsum(1) - is_eos) > 0


def shortest_run(n: torch.Tensor, guesses: torch.Tensor, done: torch.Tensor, *, eos: int) -> torch.Tensor:
    """m, the batch's shortest run of standing guesses (a 0-d tensor), leaving out rows already done
    and rows whose run holds ``</s>`` (nothing after it matters to them)."""
    g = guesses.shape[1]
    ends = ((guesses == eos) & (torch.arange(g, device=n.device) < n[:, None])).any(1)
    return n.masked_fill(done | ends, g).min()


def kept_tokens(guesses: torch.Tensor, n: torch.Tensor, m: torch.Tensor, after: torch.Tensor, *,
                pad: int) -> torch.Tensor:
    """Every row's first m guesses and one token more: its guess m+1 where that one stood too,
    else ``after``, its token after its run; ``pad`` beyond. (rows, g+1), so that m stays on the device."""
    candidates = torch.cat([guesses, after[:, None]], dim=1)
    column = torch.arange(candidates.shape[1], device=guesses.device)
    guess_m = candidates.gather(1, m.expand(len(n))[:, None])[:, 0]
    at_m = torch.where(n > m, guess_m, after)  # n > m only where m < g: guess m+1 stood too
    return torch.where(column < m, candidates, at_m[:, None]).masked_fill(column > m, pad)


def record(stats: Stats, guesses: torch.Tensor, n: torch.Tensor, betas: torch.Tensor, *, done: torch.Tensor,
           kept: torch.Tensor, m: torch.Tensor, eos: int) -> None:
    """Add a round to ``stats``: the guesses, n, the tokens each row kept (up to its ``</s>``; none
    in a row done before), and β of each judged guess of the rows still decoding: up to its first
    fallen guess, and not after a ``</s>`` guess. Device work only: nothing is read back to the
    host here (:class:`Stats`)."""
    g = guesses.shape[1]
    judged = (torch.arange(g, device=n.device) <= n[:, None]) & ~done[:, None] & ~after_eos(guesses, eos)
    stats.add(guesses, n, betas, judged, kept, m, done.clone())


@torch.inference_mode()
def autoregressive(model: T5ForConditionalGeneration, memory: CrossMemory, *, sampling: Sampling = Sampling(),
                   max_new_tokens: int = MAX_NEW_TOKENS, pad: int,
                   generator: torch.Generator | None = None) -> torch.Tensor:
    """The target alone, one token per step from the start token on the same pass and cache: the
    engine's sequential baseline, greedy at temperature 0, else sampling with the same warpers
    (the baseline speculative decoding must match)."""
    pick = argmax_pick if sampling.temperature == 0 else (lambda logits: choose(logits, sampling, generator))
    return trim(sequential_decode(model, memory, pad=pad, max_new_tokens=max_new_tokens, pick=pick), pad)


def check_request(target, draft, tokenizer, documents, *, gamma: int, sampling: Sampling, max_new_tokens: int,
                  draft_tokenizer=None) -> None:
    """Every ``ValueError`` of :func:`speculative_generate_ids`, before any work."""
    check_pair(target, draft, tokenizer, draft_tokenizer)
    check_documents(documents)
    check_speculation(gamma=gamma, max_new_tokens=max_new_tokens)
    if not isinstance(sampling, Sampling):
        raise ValueError(f"sampling must be a pidutils.speculative.Sampling, got {type(sampling).__name__}")


def speculative_generate_ids(target: T5ForConditionalGeneration, draft: T5ForConditionalGeneration,
                             tokenizer: PreTrainedTokenizerFast, documents: Sequence[str], *, gamma: int = GAMMA,
                             sampling: Sampling = Sampling(), max_new_tokens: int = MAX_NEW_TOKENS, seed: int = 0,
                             truncation: bool = False,
                             draft_tokenizer: PreTrainedTokenizerFast | None = None) -> tuple[torch.Tensor, Stats]:
    """Speculative decoding end to end: each model encodes the documents once, then the rounds run.

    ``seed`` seeds the draws and the uniforms r_i, so a sampled run repeats exactly.
    """
    check_request(target, draft, tokenizer, documents, gamma=gamma, sampling=sampling, max_new_tokens=max_new_tokens,
                  draft_tokenizer=draft_tokenizer)
    generator = torch.Generator(device=target.device).manual_seed(seed)
    memories = [document_memory(m, tokenizer, documents, truncation=truncation) for m in (target, draft)]
    return speculative_decode(target, draft, *memories, gamma=gamma, sampling=sampling, max_new_tokens=max_new_tokens,
                              pad=tokenizer.pad_token_id, generator=generator)


def speculative_generate(target: T5ForConditionalGeneration, draft: T5ForConditionalGeneration,
                         tokenizer: PreTrainedTokenizerFast, documents: Sequence[str], *, gamma: int = GAMMA,
                         sampling: Sampling = Sampling(), max_new_tokens: int = MAX_NEW_TOKENS, seed: int = 0,
                         truncation: bool = False) -> list[str]:
    """Each document's output as text."""
    tokens, _ = speculative_generate_ids(target, draft, tokenizer, documents, gamma=gamma, sampling=sampling,
                                         max_new_tokens=max_new_tokens, seed=seed, truncation=truncation)
    return tokenizer.batch_decode(tokens, skip_special_tokens=True)
