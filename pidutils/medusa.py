"""Medusa (Cai et al. 2024): the target drafts for itself with K extra heads, and one pass checks a tree (chapter 6).

One round, for rows that share a cache length L:

1. **Heads.** The target's final hidden state h_t gave its own next token (the *root*, y_{t+1}); K
   heads on the same h_t guess the tokens after it: head k's distribution is
   p_t^(k) = softmax(W2^(k)(SiLU(W1^(k) h_t) + h_t)) over y_{t+k+1} (:class:`Heads`).
2. **Candidates.** A tree of head ranks: node (r_1, .., r_d) is head d's top-(r_d + 1) token,
   under its parent (r_1, .., r_{d-1}); the root is the target's token (:func:`candidates`).
3. **Verify.** The root and every node go through the target in one pass: node i sits at position
   L + depth(i) and sees the cached prefix, its ancestors and itself (:func:`tree_bias`).
4. **Accept.** A node stands when its token is what the target makes after its parent (greedy:
   the argmax; typical: any token with p(x) > min(ε, δ·exp(−H(p))), the argmax included), and
   every ancestor stands; the deepest standing node wins (:func:`deepest_standing`).
5. **Keep.** The winning branch's keys and values are moved into place after the prefix and the rest
   of the tree is dropped (:meth:`pidutils.t5.KVCache.keep`); the cross-attention memory is never
   touched. The target's token after the branch is the next root, and the heads read the branch's
   last hidden state for the next guesses: the pass that checks one round drafts the next.

A batch of b rows shares one cache length, so every row keeps the batch's shallowest winning depth
m (leaving out rows that have ended, or whose branch holds ``</s>``), as chapter 5 keeps its
shortest run: under greedy acceptance each row's first m branch tokens are its target's own
tokens, so every row stays exact and only waits for the others.
"""
from __future__ import annotations

import heapq
import json
import math
import pathlib
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from .checks import check_documents, check_float, check_int
from .sequential import MAX_NEW_TOKENS
from .t5 import (CrossMemory, KVCache, bias_table, causal_bias, check_t5, decoder_states, document_memory,
                 encoded_memory, lm_logits, pad_after_eos, position_bias, start_tokens, trim)
from .tokenizer import check_vocab
from .zoo import heads_path

DECAY = 0.8  # λ_k = 0.8^k, the slides' weight of head k in L_MEDUSA-1
EPSILON, DELTA = 0.09, 0.3  # typical acceptance's defaults, those of Medusa's repository

Tree = tuple[tuple[int, ...], ...]  # the nodes, as paths of head ranks, every parent before its children


# --- The heads ---------------------------------------------------------------------------------------

class Heads(torch.nn.Module):
    """K Medusa heads on a target's final hidden states (chapter 6, "The heads").

    Head k maps h to W2^(k)(SiLU(W1^(k) h) + h): a residual SiLU block, its W1 initialised to zero,
    then its own LM head, initialised from the target's (:meth:`for_target`), so that every head
    starts out predicting the next token and learns to look further ahead.
    """

    def __init__(self, *, k: int, d_model: int, vocab_size: int) -> None:
        super().__init__()
        check_int("k", k, 1)
        check_int("d_model", d_model, 1)
        check_int("vocab_size", vocab_size, 1)
        self.w1 = torch.nn.Parameter(torch.zeros(k, d_model, d_model))
        self.w2 = torch.nn.Parameter(torch.zeros(k, vocab_size, d_model))

    @property
    def k(self) -> int:
        return self.w1.shape[0]

    @classmethod
    def for_target(cls, model: T5ForConditionalGeneration, *, k: int) -> "Heads":
        """K fresh heads for ``model``: W1 = 0, and W2 its LM head (its output scale folded in)."""
        check_t5(model)
        cfg = model.config
        heads = cls(k=k, d_model=cfg.d_model, vocab_size=cfg.vocab_size).to(device=model.device, dtype=model.dtype)
        scale = cfg.d_model ** -0.5 if cfg.scale_decoder_outputs else 1.0
        with torch.no_grad():
            heads.w2.copy_((model.lm_head.weight * scale).expand(k, -1, -1))
        return heads

    def forward(self, states: torch.Tensor, *, k: int | None = None) -> torch.Tensor:
        """The first ``k`` heads' logits (..., k, vocab) at ``states`` (..., d_model); all heads if None."""
        k = self.k if k is None else k
        w1, w2 = self.w1[:k].to(states.dtype), self.w2[:k].to(states.dtype)
        z = F.silu(torch.einsum("...d,ked->...ke", states, w1)) + states[..., None, :]
        return torch.einsum("...kd,kvd->...kv", z, w2)

    def save(self, folder: pathlib.Path, report: dict) -> None:
        """The heads as ``heads.safetensors`` (float16 on disk) beside ``heads.json`` (their shape and report)."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file({"w1": self.w1.detach().half().cpu(), "w2": self.w2.detach().half().cpu()},
                  str(folder / "heads.safetensors"))
        shape = {"k": self.k, "d_model": self.w1.shape[1], "vocab_size": self.w2.shape[1]}
        (folder / "heads.json").write_text(json.dumps({"shape": shape, **report}, indent=2) + "\n")

    @classmethod
    def load(cls, folder: pathlib.Path, *, device: str | torch.device = "cpu") -> "Heads":
        """Heads saved by :meth:`save`, in float32 on ``device``."""
        shape = json.loads((folder / "heads.json").read_text())["shape"]
        heads = cls(**shape)
        weights = load_file(str(folder / "heads.safetensors"))
        heads.load_state_dict({name: w.float() for name, w in weights.items()})
        return heads.to(device).eval()


def load_heads(name: str, *, device: str | torch.device = "cpu") -> Heads:
    """A shipped set of heads (:data:`pidutils.zoo.HEAD_RECIPES`), on ``device``."""
    folder = heads_path(name)
    if not (folder / "heads.safetensors").exists():
        raise FileNotFoundError(f"{name} is not built; run: python -m pidutils.zoo train {name}")
    return Heads.load(folder, device=device)


def heads_report(name: str) -> dict:
    """A shipped set of heads' training report: recipe, wall time, machine, each head's top-i accuracies."""
    return json.loads((heads_path(name) / "heads.json").read_text())


def shipped_tree(name: str, *, size: int, k: int | None = None) -> Tree:
    """The tree of ``size`` nodes built from a shipped set of heads' validation accuracies, over its
    first ``k`` heads (all if None): :func:`accuracy_tree`."""
    acc = heads_report(name)["validation_accuracy"]
    return accuracy_tree(acc[:check_int("k", k, 1, len(acc)) if k is not None else len(acc)], size=size)


def check_heads(model: T5ForConditionalGeneration, heads: Heads) -> None:
    """The heads must read the target's hidden states and speak its vocabulary (``ValueError`` otherwise)."""
    check_t5(model)
    if not isinstance(heads, Heads):
        raise ValueError(f"heads must be pidutils.medusa.Heads, got {type(heads).__name__}")
    d_model, vocab = heads.w1.shape[1], heads.w2.shape[1]
    if (d_model, vocab) != (model.config.d_model, model.config.vocab_size):
        raise ValueError(f"heads must be trained for this target: they have d_model {d_model} and a vocabulary "
                         f"of {vocab}, the target d_model {model.config.d_model} and {model.config.vocab_size}")


# --- Training: L_MEDUSA-1 on the frozen target's hidden states, L_MEDUSA-2 through the body too -----------

def decayed(k: int, decay: float = DECAY) -> list[float]:
    """λ_1 .. λ_k = decay^1 .. decay^k."""
    return [decay ** i for i in range(1, k + 1)]


def head_labels(labels: torch.Tensor, k: int) -> torch.Tensor:
    """Each head's label at each position: ``labels`` (rows, n) are the next tokens y_{t+1} (-100 on
    padding); head i at t is to predict y_{t+i+1}, that is ``labels`` shifted left by i. (rows, n, k)."""
    shifted = [F.pad(labels, (0, i), value=-100)[:, i:] for i in range(1, k + 1)]
    return torch.stack(shifted, -1)


def medusa_loss(heads: Heads, states: torch.Tensor, labels: torch.Tensor, *, decay: float = DECAY) -> torch.Tensor:
    """L_MEDUSA-1 = Σ_k −λ_k log p_t^(k)(y_{t+k+1}), averaged over positions: ``states`` (n, d) from the
    target (frozen in Medusa-1, training with the heads in Medusa-2), ``labels`` (n, K) from :func:`head_labels`."""
    logits = heads(states)
    counts = (labels != -100).sum(0).clamp_min(1)  # a head with no label here (a short answer) adds 0
    losses = [F.cross_entropy(logits[:, i], labels[:, i], ignore_index=-100, reduction="sum") / counts[i]
              for i in range(heads.k)]
    return sum(w * loss for w, loss in zip(decayed(heads.k, decay), losses))


def body_states(model: T5ForConditionalGeneration, batch: dict) -> torch.Tensor:
    """A body's final hidden states (rows, n, d) on a sequence-to-sequence ``batch``, fed its labels
    shifted right, through Hugging Face's modules (differentiable, for Medusa-2's training)."""
    encoded = model.encoder(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
    decoded = model.decoder(input_ids=model.prepare_decoder_input_ids_from_labels(batch["labels"]),
                            encoder_hidden_states=encoded, encoder_attention_mask=batch["attention_mask"])
    return decoded.last_hidden_state


def medusa2_loss(model: T5ForConditionalGeneration, heads: Heads, batch: dict, *, lambda0: float,
                 decay: float = DECAY, teacher: T5ForConditionalGeneration | None = None) -> torch.Tensor:
    """L_MEDUSA-2 = L_LM + λ_0 L_MEDUSA-1 on a sequence-to-sequence ``batch`` (chapter 6, "Medusa-2"),
    through the body and the heads, so that training moves the body as well as the heads.

    L_LM is the body's cross-entropy on the labels; with a ``teacher`` (the body as it was, frozen)
    it is Medusa's self-distillation instead: KL(p_teacher ‖ p_body) at every labelled position,
    which holds the body to the teacher's whole next-token distribution, not only to the labels."""
    labels = batch["labels"]
    real = labels != -100
    states = body_states(model, batch)
    log_q = lm_logits(model, states)[real].log_softmax(-1)
    if teacher is None:
        lm = F.nll_loss(log_q, labels[real])
    else:
        with torch.no_grad():
            log_p = lm_logits(teacher, body_states(teacher, batch))[real].log_softmax(-1)
        lm = F.kl_div(log_q, log_p, log_target=True, reduction="batchmean")
    return lm + lambda0 * medusa_loss(heads, states[real], head_labels(labels, heads.k)[real], decay=decay)


@torch.inference_mode()
def teacher_forced_states(model: T5ForConditionalGeneration, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """The target's final hidden states at every decoder position of a sequence-to-sequence ``batch``
    (:func:`pidutils.batching.seq2seq_batch`), fed its labels shifted right, on the engine's pass;
    returns them (rows, n, d) and the labels (rows, n)."""
    labels = batch["labels"].to(model.device)
    ids = F.pad(labels[:, :-1], (1, 0), value=model.config.decoder_start_token_id).clamp_min(0)
    memory = encoded_memory(model, batch["input_ids"].to(model.device), batch["attention_mask"].to(model.device))
    valid = torch.ones_like(ids, dtype=torch.bool)
    return decoder_states(model, ids, memory, causal_bias(bias_table(model), 0, ids.shape[1], valid)), labels


def accuracies(heads: Heads, states: torch.Tensor, labels: torch.Tensor, *, top: int = 10) -> list[list[float]]:
    """acc[k][i]: how often head k's top-(i+1) guess is its label, over the positions that have one
    (``states`` (n, d), ``labels`` (n, K)): the calibration the tree is built from."""
    ranks = heads(states).topk(top, -1).indices  # (n, K, top)
    hits = ranks == labels[..., None]
    real = labels != -100
    return [(hits[:, k][real[:, k]].double().mean(0)).tolist() for k in range(heads.k)]


# --- The tree of candidates -----------------------------------------------------------------------------

def check_tree(tree: Sequence[Sequence[int]], *, heads: int | None = None) -> Tree:
    """A tree as a tuple of paths of non-negative ranks, each path's parent before it, at most
    ``heads`` deep (there is a head for every depth); ``ValueError`` otherwise."""
    is_paths = isinstance(tree, (list, tuple)) and all(isinstance(p, (list, tuple)) for p in tree)
    paths = tuple(tuple(p) for p in tree) if is_paths else None
    if not paths:
        raise ValueError(f"tree must be a non-empty sequence of paths of head ranks, got {tree!r}")
    seen: set[tuple[int, ...]] = {()}
    for path in paths:
        if not path or any(isinstance(r, bool) or not isinstance(r, int) or r < 0 for r in path):
            raise ValueError(f"tree must hold paths of non-negative integer ranks, got {path!r}")
        if path[:-1] not in seen or path in seen:
            raise ValueError(f"tree must list each path once, after its parent: {path!r}")
        if heads is not None and len(path) > heads:
            raise ValueError(f"tree must be at most {heads} deep (one head per depth), got a path of {len(path)}")
        seen.add(path)
    return paths


def cartesian_tree(*, depth: int, top_k: int) -> Tree:
    """The fixed baseline: every combination of each of the first ``depth`` heads' top ``top_k``."""
    check_int("depth", depth, 1)
    check_int("top_k", top_k, 1)
    level, tree = [()], []
    for _ in range(depth):
        level = [p + (r,) for p in level for r in range(top_k)]
        tree += level
    return tuple(tree)


def accuracy_tree(acc: Sequence[Sequence[float]], *, size: int) -> Tree:
    """The tree of ``size`` nodes built node by node from the heads' top-i accuracies ``acc[k][i]``
    (the slides): each time, add the node likeliest to stand, Π acc[d][r_d] along its path, among
    the children of the tree (or of the root) whose lower-ranked siblings are in it already. Their
    sum is the expected accepted depth (:func:`expected_tokens`). When every head's accuracies fall
    with rank, a node is never likelier than its parent or its lower-ranked sibling, so the tree is
    the ``size`` likeliest nodes: the best tree of that size. Otherwise it is the slides' greedy rule."""
    check_int("size", size, 1)
    frontier = [(-path_probability((0,), acc), (0,))]
    tree: list[tuple[int, ...]] = []
    while frontier and len(tree) < size:
        _, path = heapq.heappop(frontier)
        tree.append(path)
        d, r = len(path), path[-1]
        offers = ([path[:-1] + (r + 1,)] if r + 1 < len(acc[d - 1]) else []) + ([path + (0,)] if d < len(acc) else [])
        for offer in offers:  # its next sibling and its first child
            heapq.heappush(frontier, (-path_probability(offer, acc), offer))
    return tuple(sorted(tree, key=lambda p: (len(p), p)))


def path_probability(path: Sequence[int], acc: Sequence[Sequence[float]]) -> float:
    """Π acc[d][r_d] along ``path``: the chance that it stands, taking the heads as independent."""
    return math.prod(acc[d][r] for d, r in enumerate(path))


def expected_tokens(tree: Sequence[Sequence[int]], acc: Sequence[Sequence[float]]) -> float:
    """Tokens a round makes, predicted from the accuracies: the root plus the expected accepted depth,
    Σ over nodes of the chance that the node stands (at most one node per depth stands)."""
    return 1.0 + sum(path_probability(p, acc) for p in check_tree(tree, heads=len(acc)))


@dataclass(frozen=True)
class TreeLayout:
    """A tree's index tensors on one device; node 0 is the root, nodes 1..N the tree's paths in order."""

    paths: Tree
    depth: torch.Tensor      # (N+1,)
    parent: torch.Tensor     # (N+1,), the root its own
    head: torch.Tensor       # (N,): which head proposes node i+1 (its depth − 1)
    rank: torch.Tensor       # (N,): which of that head's top-k
    ancestors: torch.Tensor  # (N+1, N+1) bool: node i sees node j (j is i or an ancestor of i)
    branch: torch.Tensor     # (N+1, D+1): the nodes from the root down to node i, then i repeated
    top_k: int               # ranks the heads must give
    depth_max: int           # heads the tree uses

    @property
    def nodes(self) -> int:
        return len(self.paths) + 1


def tree_layout(tree: Sequence[Sequence[int]], *, device: torch.device | str) -> TreeLayout:
    """The index tensors that :func:`candidates`, :func:`tree_bias` and acceptance read."""
    paths = check_tree(tree)
    index = {(): 0} | {p: i + 1 for i, p in enumerate(paths)}
    depth = max(len(p) for p in paths)
    chains = [[index[p[:d]] for d in range(len(p) + 1)] for p in ((), *paths)]
    ancestors = torch.zeros((len(index), len(index)), dtype=torch.bool)
    for i, chain in enumerate(chains):
        ancestors[i, chain] = True
    branch = [chain + [chain[-1]] * (depth + 1 - len(chain)) for chain in chains]
    long = lambda x: torch.tensor(x, dtype=torch.long, device=device)  # noqa: E731
    return TreeLayout(paths, long([len(p) for p in ((), *paths)]), long([0] + [index[p[:-1]] for p in paths]),
                      long([len(p) - 1 for p in paths]), long([p[-1] for p in paths]), ancestors.to(device),
                      long(branch), max(max(p) for p in paths) + 1, depth)


def tree_bias(table: torch.Tensor, layout: TreeLayout, past: int) -> torch.Tensor:
    """The verification pass's self-attention bias (1, h, N+1, past+N+1): node i at position
    past + depth(i) sees every cached token and its own ancestors, at T5's relative distances."""
    position_q = past + layout.depth
    position_k = torch.cat([torch.arange(past, device=position_q.device), position_q])
    allowed = torch.cat([layout.ancestors.new_ones((layout.nodes, past)), layout.ancestors], 1)
    return position_bias(table, (position_q[:, None] - position_k[None])[None], allowed[None])


def candidates(root: torch.Tensor, top: torch.Tensor, layout: TreeLayout) -> torch.Tensor:
    """The pass's tokens (rows, N+1): the root (rows, 1), then node i's token, its head's rank-r guess
    from ``top`` (rows, K, top_k), the heads' top-k token ids."""
    return torch.cat([root, top[:, layout.head, layout.rank]], 1)


# --- Acceptance --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Typical:
    """Typical acceptance: a node stands when its token x has p(x) > min(ε, δ·exp(−H(p))) under the
    target's distribution p after its parent, or is p's argmax. Not exact: it trades the target's
    greedy output for longer accepted branches (chapter 6 measures by how much)."""

    epsilon: float = EPSILON
    delta: float = DELTA

    def __post_init__(self) -> None:
        check_float("epsilon", self.epsilon, 0.0)
        check_float("delta", self.delta, 0.0)


def stands(tokens: torch.Tensor, logits: torch.Tensor, layout: TreeLayout, typical: Typical | None, *,
           choice: torch.Tensor | None = None) -> torch.Tensor:
    """Whether each node's token (rows, N) is one the target accepts after the node's parent:
    greedy (``typical`` None), its argmax; else :class:`Typical`'s rule. ``choice``: the target's
    argmax at every node, ``logits.argmax(-1)``, when the caller has it already."""
    choice = logits.argmax(-1) if choice is None else choice
    argmax = tokens[:, 1:] == choice[:, layout.parent[1:]]
    if typical is None:
        return argmax
    p = logits[:, layout.parent[1:]].float().softmax(-1)  # (rows, N, vocab): after each node's parent
    p_x = p.gather(-1, tokens[:, 1:, None])[..., 0]
    threshold = torch.clamp(typical.delta * torch.exp(-torch.special.entr(p).sum(-1)), max=typical.epsilon)
    return argmax | (p_x > threshold)


def deepest_standing(node_stands: torch.Tensor, layout: TreeLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """Each row's winning node (rows,) and its depth a (rows,): the deepest node that stands with all its
    ancestors (the first such node at that depth; the root, depth 0, always stands)."""
    ok = torch.cat([torch.ones_like(node_stands[:, :1]), node_stands], 1)[:, layout.branch].all(-1)
    best = (layout.depth * ok).argmax(-1)
    return best, layout.depth[best]


# --- Decoding -----------------------------------------------------------------------------------------

@dataclass
class Round:
    """One round of one row: the pass's tokens (root first), whether each node stood (the root always
    does), the winning node, its depth a, and the winning branch's tokens (root first, a + 1)."""

    ids: list[int]
    stood: list[bool]
    best: int
    depth: int
    branch: list[int]


@dataclass
class Stats:
    """What a Medusa run measured: the target passes, and each round's tensors, read back from the
    device only when asked for (:meth:`rounds`, :attr:`depths`, :attr:`branches`)."""

    passes: int = 1  # the first pass, on the start token, makes the first root
    pending: list[tuple[torch.Tensor, ...]] = field(default_factory=list, repr=False)

    def add(self, ids: torch.Tensor, stood: torch.Tensor, best: torch.Tensor, a: torch.Tensor,
            branch: torch.Tensor, done: torch.Tensor) -> None:
        """Keep one round's tensors: the pass's tokens, which nodes stood, the winner, its depth, the
        winning branch's tokens and which rows had ended before the round."""
        self.pending.append((ids, stood, best, a, branch, done))

    def rounds(self, row: int = 0) -> list[Round]:
        """Row ``row``'s rounds, until it ended."""
        return [Round(ids[row].tolist(), [True] + stood[row].tolist(), int(best[row]), int(a[row]),
                      branch[row, :int(a[row]) + 1].tolist())
                for ids, stood, best, a, branch, done in self.pending if not bool(done[row])]

    @property
    def depths(self) -> list[list[int]]:
        """Per round, each row's winning depth a, for the rows still decoding."""
        return [a[~done].tolist() for *_, a, _, done in self.pending]

    @property
    def branches(self) -> list[list[list[int]]]:
        """Per round, each still decoding row's winning branch: its root and the a tokens that stood."""
        return [[row[:n + 1] for row, n in zip(branch[~done].tolist(), a[~done].tolist())]
                for *_, a, branch, done in self.pending]


def check_decoding(model: T5ForConditionalGeneration, heads: Heads, tree: Sequence[Sequence[int]], *,
                   max_new_tokens: int, capacity: int | None) -> Tree:
    """Every ``ValueError`` of :func:`medusa_decode` before any work: heads for this target, a tree no
    deeper than the heads, and a cache with room for the answer and one tree."""
    check_heads(model, heads)
    paths = check_tree(tree, heads=heads.k)
    check_int("max_new_tokens", max_new_tokens, 1)
    if capacity is not None:
        check_int("capacity", capacity, 1)
        if len(paths) + 1 + max_new_tokens > capacity:
            raise ValueError(f"tree must fit in the KV cache: {len(paths)} nodes, their root and max_new_tokens = "
                             f"{max_new_tokens} need {len(paths) + 1 + max_new_tokens} tokens, capacity is {capacity}")
    return paths


@torch.inference_mode()
def medusa_decode(model: T5ForConditionalGeneration, heads: Heads, memory: CrossMemory, *,
                  tree: Sequence[Sequence[int]], typical: Typical | None = None,
                  max_new_tokens: int = MAX_NEW_TOKENS, pad: int,
                  capacity: int | None = None) -> tuple[torch.Tensor, Stats]:
    """The decoding phase alone, for documents already encoded into ``memory``: rounds of one
    verification pass each, until every row has made ``</s>`` or ``max_new_tokens`` tokens.

    Returns the tokens (rows, length), ``pad`` after each row's ``</s>``, and the run's :class:`Stats`.
    ``capacity``: the KV cache's size in tokens (default: the answer plus one tree). A round reads one
    pair of numbers back to the host: m, and whether every row is done.
    """
    paths = check_decoding(model, heads, tree, max_new_tokens=max_new_tokens, capacity=capacity)
    rows, device, eos = memory.keys[0].shape[0], model.device, model.config.eos_token_id
    layout = tree_layout(paths, device=device)
    depth = layout.depth_max
    cache = KVCache.empty(model, rows, capacity or max_new_tokens + layout.nodes)
    table = bias_table(model)
    root, top = first_guesses(model, heads, memory, table, cache, layout)
    tokens = torch.full((rows, max_new_tokens), pad, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    made, stats, finished = 0, Stats(), False
    while made < max_new_tokens and not finished:
        past = cache.length
        ids, states, choice, stood, best, a = verify(model, memory, table, layout, cache, root, top, typical)
        branch = layout.branch[best]  # (rows, D+1): the winning branch's nodes, root first
        kept = ids.gather(1, branch)
        m = shallowest(a, kept, done, eos=eos, depth=depth).clamp_max(max_new_tokens - made - 1)
        stats.add(ids, stood, best, a, kept, done.clone())
        kept = pad_after_eos(kept.masked_fill(torch.arange(depth + 1, device=device) > m, pad), done, eos=eos, pad=pad)
        m, finished = (int(x) for x in torch.stack([m, done.all().long()]).tolist())
        tokens[:, made:made + m + 1] = kept[:, :m + 1]
        made, stats.passes = made + m + 1, stats.passes + 1
        cache.keep(past, branch[:, :m + 1])
        root, top = next_guesses(heads, choice, states, branch[:, m:m + 1], layout)
    return trim(tokens[:, :made], pad), stats


def first_guesses(model: T5ForConditionalGeneration, heads: Heads, memory: CrossMemory, table: torch.Tensor,
                  cache: KVCache, layout: TreeLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The start token's pass: the first root (rows, 1), the target's own first token, and the heads'
    first guesses (rows, depth, top_k)."""
    start = start_tokens(model, memory.keys[0].shape[0])
    states = decoder_states(model, start, memory, causal_bias(table, 0, 1, torch.ones_like(start, dtype=torch.bool)),
                            cache)[:, -1]
    return lm_logits(model, states).argmax(-1, keepdim=True), guesses(heads, states, layout)


def next_guesses(heads: Heads, choice: torch.Tensor, states: torch.Tensor, last: torch.Tensor,
                 layout: TreeLayout) -> tuple[torch.Tensor, torch.Tensor]:
    """The next round's root and guesses, at each row's last kept node ``last`` (rows, 1): the target's
    token there, and the heads' guesses from its hidden state (the pass that checked a round drafts the next)."""
    kept_state = states.gather(1, last[..., None].expand(-1, -1, states.shape[-1]))[:, 0]
    return choice.gather(1, last), guesses(heads, kept_state, layout)


def verify(model: T5ForConditionalGeneration, memory: CrossMemory, table: torch.Tensor, layout: TreeLayout,
           cache: KVCache, root: torch.Tensor, top: torch.Tensor, typical: Typical | None):
    """One verification pass: the candidates (rows, N+1) through the target after ``cache``, under the
    tree's bias. Returns the candidates, the pass's hidden states, the target's argmax at every node,
    whether each node stood (rows, N), and each row's winning node and depth."""
    ids = candidates(root, top, layout)
    states = decoder_states(model, ids, memory, tree_bias(table, layout, cache.length), cache)
    logits = lm_logits(model, states)
    choice = logits.argmax(-1)
    stood = stands(ids, logits, layout, typical, choice=choice)
    best, a = deepest_standing(stood, layout)
    return ids, states, choice, stood, best, a


def guesses(heads: Heads, states: torch.Tensor, layout: TreeLayout) -> torch.Tensor:
    """The heads' top-k token ids (rows, depth, top_k) at each row's last kept hidden state (rows, d):
    only the heads and ranks the tree uses."""
    return heads(states, k=layout.depth_max).topk(layout.top_k, -1).indices


def shallowest(a: torch.Tensor, kept: torch.Tensor, done: torch.Tensor, *, eos: int, depth: int) -> torch.Tensor:
    """m, the batch's shallowest winning depth (a 0-d tensor), leaving out rows already done and rows
    whose winning branch holds ``</s>`` (nothing after it matters to them)."""
    ends = ((kept == eos) & (torch.arange(depth + 1, device=a.device) <= a[:, None])).any(1)
    return a.masked_fill(done | ends, depth).min()


def check_request(model, heads, tokenizer, documents) -> None:
    """The ``ValueError`` checks of :func:`medusa_generate_ids` on its model, heads and documents."""
    check_heads(model, heads)
    check_documents(documents)
    check_vocab(tokenizer, model)


@torch.inference_mode()
def medusa_generate_ids(model: T5ForConditionalGeneration, heads: Heads, tokenizer: PreTrainedTokenizerFast,
                        documents: Sequence[str], *, tree: Sequence[Sequence[int]], typical: Typical | None = None,
                        max_new_tokens: int = MAX_NEW_TOKENS, truncation: bool = False) -> tuple[torch.Tensor, Stats]:
    """Medusa decoding of every document: the encoder once per document, then :func:`medusa_decode`."""
    check_request(model, heads, tokenizer, documents)
    check_decoding(model, heads, tree, max_new_tokens=max_new_tokens, capacity=None)
    memory = document_memory(model, tokenizer, documents, truncation=truncation)
    return medusa_decode(model, heads, memory, tree=tree, typical=typical, max_new_tokens=max_new_tokens,
                         pad=tokenizer.pad_token_id)
