"""Named checkpoints shipped inside the package, and hub models for readers who are online.

``load("pie-t5-tiny")`` returns a shipped model and its tokenizer (plain Hugging Face format, so
``T5ForConditionalGeneration.from_pretrained(path("pie-t5-tiny"))`` works too).
``python -m pidutils.zoo train pid-t5-tiny`` retrains one, reproducibly, on a CPU: from a random model,
or, for ``pie-t5-tiny``, by fine-tuning the checkpoint its recipe names (``Recipe.init``).
``load("t5-small")`` fetches from the Hugging Face hub when it is reachable, and otherwise fails
within seconds, naming the offline alternatives. See chapter 2.

Hugging Face's ``generate`` sizes a T5's KV cache by the encoder's depth, so on a checkpoint whose
decoder is deeper (``seq-t5-deep``) plain ``model.generate`` fails with an ``IndexError``; call
:func:`generate` instead, or ``model.generate`` inside :func:`decoder_depth_as_cache_depth`.
"""
from __future__ import annotations

import contextlib
import json
import os
import pathlib
import socket
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import torch
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration
from transformers.utils import logging as hf_logging

from ..checks import check_choice, check_device
from ..data import make_split

CHECKPOINTS = pathlib.Path(__file__).parent / "checkpoints"
HUB_MODELS = {"t5-small": "google-t5/t5-small", "t5-base": "google-t5/t5-base"}
HUB_HOST = ("huggingface.co", 443)
SHARD_SIZE = "8MB"  # larger checkpoints are saved as several safetensors files of at most this size


@dataclass(frozen=True)
class Recipe:
    """How a shipped checkpoint is made: its method, shape and training schedule."""

    method: str
    d_model: int = 128
    d_ff: int = 512
    d_kv: int = 32
    num_heads: int = 4
    num_layers: int = 3
    num_decoder_layers: int = 2
    vocab_size: int = 1000  # the tokenizer's target; the model takes the size it reaches
    steps: int = 8000
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adamw"  # or "adafactor" (pidutils.train.OPTIMIZERS)
    warmup: int = 300
    seed: int = 0
    train_dialogues: int = 3000
    validate_every: int = 1000
    curriculum: int = 0  # steps of sequence-length warm-up (short dialogues first)
    init: str = ""  # a shipped checkpoint to fine-tune (its weights and tokenizer); "": a random model


RECIPES: dict[str, Recipe] = {
    "pie-t5-tiny": Recipe(method="pie", steps=9000, lr=3e-3, optimizer="adafactor", train_dialogues=20000,
                          init="pid-t5-tiny"),
    "pid-t5-tiny": Recipe(method="pid", steps=7000, validate_every=500, curriculum=1200, lr=1e-2,
                          optimizer="adafactor", train_dialogues=20000),
    # Chapter 4: the full state as one sequence, and as pipelined subsequences; same shape and
    # tokenizer, both fine-tuned from pid-t5-tiny, which already copies values from the dialogue.
    "seq-t5-tiny": Recipe(method="seq", steps=4000, validate_every=500, lr=3e-3, optimizer="adafactor",
                          train_dialogues=20000, init="pid-t5-tiny"),
    "pipe-t5-tiny": Recipe(method="pipe", steps=4000, validate_every=500, lr=3e-3, optimizer="adafactor",
                           train_dialogues=20000, init="pid-t5-tiny"),
    # Chapter 5: the speculative target, the sequential task on a decoder eight times as deep as
    # seq-t5-tiny's (its draft), grown from pid-t5-tiny by adding 14 blocks that start as the identity.
    "seq-t5-deep": Recipe(method="seq", num_decoder_layers=16, steps=4000, validate_every=500, lr=3e-3,
                          optimizer="adafactor", train_dialogues=20000, init="pid-t5-tiny"),
    # Chapter 5's second draft, of graded quality: seq-t5-tiny cut to its first encoder and decoder
    # block, and fine-tuned for only 60 steps, so that it agrees with the target less often (α about
    # 0.8 greedy) and costs less than seq-t5-tiny, its encoder included.
    "seq-t5-mini": Recipe(method="seq", num_layers=1, num_decoder_layers=1, steps=60, warmup=20,
                          validate_every=60, lr=3e-3, optimizer="adafactor", train_dialogues=20000,
                          init="seq-t5-tiny"),
}


@dataclass(frozen=True)
class HeadsRecipe:
    """How a shipped set of Medusa heads is trained (chapter 6): L_MEDUSA-1 on a frozen target's
    hidden states at every position of its training dialogues, teacher-forced on their labels."""

    target: str
    k: int = 5
    train_dialogues: int = 20000  # those the target was trained on
    epochs: int = 6
    batch_size: int = 512  # positions per step
    lr: float = 2e-3
    decay: float = 0.8  # λ_k = decay^k
    seed: int = 0


@dataclass(frozen=True)
class JointRecipe:
    """How Medusa-2 heads are trained together with their body (chapter 6): L_MEDUSA-2 = L_LM +
    λ_0 L_MEDUSA-1 on the target's training dialogues, starting from the target and its Medusa-1
    ``heads``, with λ_0 raised linearly from 0 over the first ``ramp`` steps (the slides' "gradually
    increase λ_0"). With ``distill``, L_LM is Medusa's self-distillation, KL to the frozen target's
    next-token distributions; without, cross-entropy on the labels. The body changes, so its folder
    holds the new body beside the heads."""

    target: str  # the checkpoint whose body it starts from (the body it ships is its own)
    heads: str  # the Medusa-1 heads it starts from
    steps: int = 1500
    batch_size: int = 8  # dialogues per step
    lr: float = 2e-3
    optimizer: str = "adafactor"
    warmup: int = 50
    lambda0: float = 0.1  # distilled: 0.2 and 0.6 flipped a test answer (0.2 into a loop), 0.05 weakened the heads
    ramp: int = 500
    decay: float = 0.8  # λ_k = decay^k
    validate_every: int = 500
    seed: int = 0
    distill: bool = True  # L_LM as KL to the frozen target (False: cross-entropy on the labels)


@dataclass(frozen=True)
class CausalRecipe:
    """How a shipped decoder-only model is made (chapter 7): a Llama-style causal LM (RMSNorm, rotary
    positions, grouped-query attention, SwiGLU) trained from scratch on "document </s> Z_u :" -> Y_u,
    every question of a dialogue a branch after its document (:func:`pidutils.shared_prefix.branch_rows`).
    It reads the dialogues with ``tokenizer``'s tokenizer, and is tested on that checkpoint's test split."""

    tokenizer: str = "pid-t5-tiny"
    hidden_size: int = 128
    intermediate_size: int = 512
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    max_positions: int = 1024  # a 512-token document, a question and its answer fit
    steps: int = 4000
    batch_size: int = 8
    lr: float = 1e-2
    optimizer: str = "adafactor"
    warmup: int = 300
    seed: int = 0
    train_dialogues: int = 20000
    validate_every: int = 500
    curriculum: int = 1200
    init: str = ""  # a shipped decoder-only checkpoint to continue from; "": random weights


# Chapter 7's model, in two runs on one CPU thread: 4000 steps from random weights (60 min; validation
# JGA 0.18 at step 2500, still climbing as the learning rate decayed), then 3000 more at a lower
# learning rate (27 min).
CAUSAL_RECIPES: dict[str, CausalRecipe] = {
    "prefix-llama-base": CausalRecipe(),
    "prefix-llama-tiny": CausalRecipe(init="prefix-llama-base", steps=3000, lr=3e-3, warmup=100, curriculum=0),
}


# Chapter 6: Medusa heads, each a small checkpoint of its own beside the target it reads; Medusa-2's
# also holds the body it was trained with, which it reads instead of its recipe's target.
HEAD_RECIPES: dict[str, HeadsRecipe | JointRecipe] = {
    "medusa-seq-t5-deep": HeadsRecipe(target="seq-t5-deep"),
    "medusa2-seq-t5-deep": JointRecipe(target="seq-t5-deep", heads="medusa-seq-t5-deep"),
}


@dataclass(frozen=True)
class CompressorRecipe:
    """How a shipped compressor is made (chapter 8): a copy of ``base``'s encoder blocks and ``max_k``
    summary vectors, fine-tuned on ``base``'s training dialogues with k drawn per batch
    (:func:`pidutils.compression.draw_k`), ``base`` itself frozen; the loss on the answers is
    ``objective``'s: ``"ce"`` the gold tokens' cross-entropy, ``"kl"`` KL from the uncompressed ``base``."""

    base: str = "pid-t5-tiny"
    objective: str = "ce"
    min_k: int = 8  # k is drawn log-uniform on min_k..max_k per batch
    max_k: int = 64
    steps: int = 9000
    batch_size: int = 8
    lr: float = 1e-3
    optimizer: str = "adamw"
    warmup: int = 200
    seed: int = 0
    validate_every: int = 1000
    validate_k: tuple[int, ...] = (8, 16, 32)  # JGA on 50 validation dialogues at these k while training
    test_k: tuple[int, ...] = (2, 4, 8, 12, 16, 24, 32, 48, 64)  # the report's test JGA at these k


# Chapter 8: one compressor per objective, each serving every k from min_k to max_k. AdamW at 1e-3:
# 300-step probes at k = 16 reached a loss of 0.37 (AdamW 1e-3) and 0.42 (3e-3); a probe at k = 24
# alone reached validation JGA 0.14 by step 750 and 0.32 by step 1750. k from 8 up: a third of the
# draws from 1 to 64 would be k <= 4, which cannot hold a dialogue's 7 set values. (The first runs
# trained only the summary vectors, by mistake: the encoder's copy was made from the frozen model,
# and kept its requires_grad; three of them left every validation JGA at 0 after 1,000-2,000 steps.)
COMPRESSOR_RECIPES: dict[str, CompressorRecipe] = {
    "compress-ce-pid-t5-tiny": CompressorRecipe(objective="ce"),
    "compress-kl-pid-t5-tiny": CompressorRecipe(objective="kl"),
}


def compressor_path(name: str) -> pathlib.Path:
    """The folder of a shipped compressor (``compressor.safetensors`` and ``compressor.json``)."""
    check_choice("name", name, sorted(COMPRESSOR_RECIPES))
    return CHECKPOINTS / name


def heads_path(name: str) -> pathlib.Path:
    """The folder of a shipped set of Medusa heads (``heads.safetensors`` and ``heads.json``, and for
    Medusa-2 its body as a checkpoint)."""
    check_choice("name", name, sorted(HEAD_RECIPES))
    return CHECKPOINTS / name


def load_body(name: str, device: str | torch.device = "cpu") -> tuple[T5ForConditionalGeneration,
                                                                     PreTrainedTokenizerFast]:
    """The target a shipped set of heads reads: Medusa-1's frozen target, or Medusa-2's own body (float32)."""
    recipe = HEAD_RECIPES[check_choice("name", name, sorted(HEAD_RECIPES))]
    return load(recipe.target if isinstance(recipe, HeadsRecipe) else name, device)


# Drafts of graded quality (chapter 5): checkpoints made to agree with a target only partly, which
# answer too poorly to be held to the book's JGA target; their α is recorded instead.
WEAK_DRAFTS = ("seq-t5-mini",)


def names() -> list[str]:
    """Every name ``load`` accepts: the shipped checkpoints, Medusa-2's bodies, then the hub models."""
    return sorted(RECIPES) + sorted(CAUSAL_RECIPES) + sorted(joint_names()) + sorted(HUB_MODELS)


def joint_names() -> list[str]:
    """The shipped Medusa-2 heads, whose folders hold the body they were trained with (chapter 6)."""
    return [name for name, recipe in HEAD_RECIPES.items() if isinstance(recipe, JointRecipe)]


def path(name: str) -> pathlib.Path:
    """The folder of a shipped checkpoint (config.json, the weights in safetensors files, tokenizer.json)."""
    check_choice("name", name, sorted(RECIPES) + sorted(CAUSAL_RECIPES))
    return CHECKPOINTS / name


def load(name: str, device: str | torch.device = "cpu") -> tuple[T5ForConditionalGeneration, PreTrainedTokenizerFast]:
    """Load a shipped checkpoint (a Medusa-2 body among them, float16 on disk), or a hub model when
    the hub is reachable; float32, eval mode, on ``device``.

    ``name`` and ``device`` are checked before anything is loaded (``ValueError``). A hub T5's
    tokenizer has 32,100 tokens for a ``vocab_size`` of 32,128; every pidutils decoder accepts
    that. ``seq-t5-deep``'s decoder is deeper than its encoder: call Hugging Face's ``generate``
    on it through :func:`generate` (plain ``model.generate`` fails with an ``IndexError``).
    """
    check_choice("name", name, names())
    device = check_device("device", device)
    if name in HUB_MODELS:
        return _load_from_hub(name, device)
    folder = heads_path(name) if name in HEAD_RECIPES else path(name)
    if not any(folder.glob("model*.safetensors")):
        raise FileNotFoundError(f"{name} is not built; run: python -m pidutils.zoo train {name}")
    with _no_progress_bar():  # a progress-bar widget for a 10 MB file is noise in the book
        kind = LlamaForCausalLM if name in CAUSAL_RECIPES else T5ForConditionalGeneration
        model = kind.from_pretrained(folder, dtype=torch.float32).to(device).eval()
    return model, PreTrainedTokenizerFast.from_pretrained(folder)


@contextlib.contextmanager
def _no_progress_bar() -> Iterator[None]:
    """Switch off transformers' progress bars inside the block, and restore them after it."""
    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


@contextlib.contextmanager
def decoder_depth_as_cache_depth(*models: T5ForConditionalGeneration) -> Iterator[None]:
    """Inside the block, each model's ``config.num_layers`` is its decoder's depth, so that Hugging
    Face's ``generate`` works on a T5 whose decoder and encoder depths differ.

    ``generate`` (transformers 5.15 to 5.24 at least) sizes a T5's KV cache by
    ``num_hidden_layers``, which for T5 is the *encoder's* depth: a deeper decoder
    (``seq-t5-deep``) fails with an ``IndexError``, a shallower one fails when an assistant's cache
    is cropped. The modules are built already, so the config entry only sizes the cache; it is
    restored after the block. Pass the target and its ``assistant_model`` together.
    """
    depths = [m.config.num_layers for m in models]
    try:
        for m in models:
            m.config.num_layers = m.config.num_decoder_layers
        yield
    finally:
        for m, depth in zip(models, depths):
            m.config.num_layers = depth


def generate(model: T5ForConditionalGeneration, **kwargs: object):
    """``model.generate(**kwargs)`` for any shipped or hub T5, however deep its decoder is
    (:func:`decoder_depth_as_cache_depth`; an ``assistant_model`` among ``kwargs`` is fixed too)."""
    models = [model] + ([kwargs["assistant_model"]] if kwargs.get("assistant_model") is not None else [])
    with decoder_depth_as_cache_depth(*models):
        return model.generate(**kwargs)


def train_report(name: str) -> dict:
    """The training report shipped with a checkpoint: wall time, machine, FLOPs, validation, test scores."""
    return json.loads((path(name) / "train_report.json").read_text())


def total_train_flops(name: str) -> float:
    """A checkpoint's training FLOPs, with those of the checkpoint it was fine-tuned from (``init``)."""
    report = train_report(name)
    init = report["recipe"]["init"]
    return report["train_flops"] + (total_train_flops(init) if init else 0.0)


def hub_reachable(timeout: float = 3.0) -> bool:
    """True if the hub answers within ``timeout`` seconds (never when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        return False
    try:
        with socket.create_connection(HUB_HOST, timeout=timeout):
            return True
    except OSError:
        return False


def _load_from_hub(name: str, device: str | torch.device):
    if not hub_reachable():
        raise ConnectionError(
            f"{name} needs the Hugging Face hub, which is not reachable from here (or HF_HUB_OFFLINE is "
            f"set). Offline, use a shipped checkpoint: {', '.join(sorted(RECIPES))} "
            f"(pidutils.zoo.load), or a random model at its shape: pidutils.models.random_t5('{name}').")
    from transformers import AutoTokenizer
    model = T5ForConditionalGeneration.from_pretrained(HUB_MODELS[name]).to(device).eval()
    return model, AutoTokenizer.from_pretrained(HUB_MODELS[name])


def new_model(recipe: Recipe, vocab_size: int) -> T5ForConditionalGeneration:
    """A freshly initialised T5 at the recipe's shape and the tokenizer's vocabulary size (seeded)."""
    torch.manual_seed(recipe.seed)
    config = T5Config(d_model=recipe.d_model, d_ff=recipe.d_ff, d_kv=recipe.d_kv, num_heads=recipe.num_heads,
                      num_layers=recipe.num_layers, num_decoder_layers=recipe.num_decoder_layers,
                      vocab_size=vocab_size, dropout_rate=0.0, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1, attn_implementation="sdpa")
    return T5ForConditionalGeneration(config)


def new_causal_model(recipe: CausalRecipe, vocab_size: int) -> LlamaForCausalLM:
    """A freshly initialised Llama-style causal LM at the recipe's shape (seeded); ``</s>`` (id 1)
    ends an answer and separates the document from the question, as in the book's tokenizer."""
    torch.manual_seed(recipe.seed)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=recipe.hidden_size,
                         intermediate_size=recipe.intermediate_size, num_hidden_layers=recipe.num_layers,
                         num_attention_heads=recipe.num_heads, num_key_value_heads=recipe.num_kv_heads,
                         max_position_embeddings=recipe.max_positions, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, attn_implementation="sdpa")
    return LlamaForCausalLM(config)


def save(name: str, model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast, report: dict,
         folder: pathlib.Path | None = None) -> pathlib.Path:
    """Write a checkpoint in Hugging Face format, with its training report."""
    folder = folder or path(name)
    folder.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(folder, max_shard_size=SHARD_SIZE)
    tokenizer.save_pretrained(folder)
    (folder / "train_report.json").write_text(json.dumps(report, indent=2) + "\n")
    return folder


def test_split(name: str):
    """The test split the named checkpoint is evaluated on (its recipe's data seed and sizes)."""
    recipe = (RECIPES | CAUSAL_RECIPES)[check_choice("name", name, sorted(RECIPES) + sorted(CAUSAL_RECIPES))]
    return make_split("test", train=recipe.train_dialogues, seed=recipe.seed)


def recipe_dict(name: str) -> dict:
    """A recipe as a plain dict, for the report."""
    return asdict((RECIPES | CAUSAL_RECIPES)[check_choice("name", name, sorted(RECIPES) + sorted(CAUSAL_RECIPES))])
