"""Prompt compression (chapter 8): a document as k summary vectors that the decoder reads instead of
its n_s encoder states.

Every decode step of every prompt cross-attends to the document's n_s encoder states (about 320 on
the book's dialogues); PID shares them among the U prompts (chapter 3), but every step still reads
them all. A compressor turns them into k vectors, k much smaller than n_s, and the decoder reads
those: the cross-attention memory, its bytes and each step's reads shrink n_s/k times.

The compressor here is AutoCompressor-style (Chevalier et al. 2023): k learned *summary tokens*
join the encoder's input, and their output states are the memory. Two choices, and why:

- **Summary tokens, not learned queries pooling the encoder's output.** In the encoder the summary
  tokens read the document in every layer (three here), each layer refining what the last gathered;
  a pooling layer reads the finished states once. And they are the encoder's own machinery, T5's
  attention and relative positions, so the compressor is a copy of the encoder plus k_max vectors.
- **In front of the document, in reverse.** The encoder is bidirectional, so where the summary
  tokens sit only changes their relative distances to the document. In front, every document's
  summary tokens take the same k columns whatever its length and padding, and a batch computes what
  each document alone does. In reverse order, summary vector i sits i + 1 places before the
  document for every k, so T5's relative positions show it the document the same way whichever k a
  batch draws (in their natural order they would shift with k). A 500-step probe with k drawn from
  8 to 64 per batch, reversed, averaged a loss of 0.40 over steps 250 to 500, against 0.30 at k = 24
  alone.

The model itself (its embeddings and its decoder, pid-t5-tiny's) is not changed: the compressor has
its own copy of the encoder's blocks, fine-tuned, and ``max_k`` summary vectors, of which a memory
of k uses the first k. So uncompressed PID and the teacher of the KL objective are the same model.
Decoding from the compressed memory is PID's: the U prompts in the decoder, their queries folded
against the k shared vectors (:func:`pidutils.t5.cross_attention`), one greedy loop.
"""
from __future__ import annotations

import copy
import json
import math
import pathlib
import random
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration
from transformers.modeling_outputs import BaseModelOutput

from .batching import pid_batches, split_answers, tokenize_checked
from .checks import check_choice, check_int, check_prompts
from .t5 import (CrossMemory, bias_table, causal_bias, check_t5, cross_memory, decoder_forward, decoder_prefixes,
                 encode, encoded_memory, greedy)
from .tokenizer import check_vocab
from .zoo import compressor_path

ANSWER_TOKENS = 8  # new tokens per answer, as PID's
# The losses: cross-entropy on the answers (AutoCompressors), KL from the uncompressed model (Wingate et al.)
OBJECTIVES = ("ce", "kl")


# --- The compressor --------------------------------------------------------------------------------

def signature(model: T5ForConditionalGeneration) -> list[float]:
    """The norms of the weights a compressed memory meets: the input embeddings and each decoder
    layer's cross-attention keys and values. A compressor is trained for the model that has them."""
    check_t5(model)
    weights = [model.shared.weight] + [w for block in model.get_decoder().block
                                       for w in (block.layer[1].EncDecAttention.k.weight,
                                                 block.layer[1].EncDecAttention.v.weight)]
    return [float(w.detach().float().norm()) for w in weights]


class Compressor(torch.nn.Module):
    """A fine-tuned copy of a T5's encoder blocks and ``max_k`` summary vectors (chapter 8, "The
    compressor"); :meth:`states` makes a document's k-vector memory."""

    def __init__(self, model: T5ForConditionalGeneration, *, max_k: int, base: str, seed: int = 0) -> None:
        super().__init__()
        check_t5(model)
        check_int("max_k", max_k, 1)
        self.base, self.signature = base, signature(model)
        embed = model.get_encoder().embed_tokens
        model.get_encoder().embed_tokens = None  # the copy shares no embedding: it is fed vectors
        try:
            self.encoder = copy.deepcopy(model.get_encoder()).requires_grad_(True)  # trained, even from a frozen model
        finally:
            model.get_encoder().embed_tokens = embed
        generator = torch.Generator().manual_seed(seed)
        rows = torch.randint(embed.weight.shape[0], (max_k,), generator=generator)
        self.summary = torch.nn.Parameter(embed.weight.detach()[rows.to(embed.weight.device)].clone())

    @property
    def max_k(self) -> int:
        return self.summary.shape[0]

    def states(self, model: T5ForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The first k summary vectors in front of each document, last first, through the encoder:
        their output states (b, k, d), in the summary vectors' order, and a mask that keeps all k."""
        b = input_ids.shape[0]
        embedded = model.shared(input_ids)
        summary = self.summary[:k].flip(0).to(embedded.dtype).expand(b, -1, -1)  # vector i sits i + 1 before X
        mask = torch.cat([attention_mask.new_ones(b, k), attention_mask], dim=1)
        out = self.encoder(inputs_embeds=torch.cat([summary, embedded], dim=1), attention_mask=mask)
        return out.last_hidden_state[:, :k].flip(1), mask[:, :k].bool()

    def save(self, folder: pathlib.Path, report: dict) -> None:
        """``compressor.safetensors`` (float16) beside ``compressor.json`` (its base, signature and report)."""
        folder.mkdir(parents=True, exist_ok=True)
        save_file({name: w.detach().half().cpu().contiguous() for name, w in self.state_dict().items()},
                  str(folder / "compressor.safetensors"))
        meta = {"base": self.base, "max_k": self.max_k, "signature": self.signature}
        (folder / "compressor.json").write_text(json.dumps(meta | report, indent=2) + "\n")

    @classmethod
    def load(cls, folder: pathlib.Path, model: T5ForConditionalGeneration) -> "Compressor":
        """A compressor saved by :meth:`save`, for ``model`` (on its device, in its dtype)."""
        meta = json.loads((folder / "compressor.json").read_text())
        compressor = cls(model, max_k=meta["max_k"], base=meta["base"])
        compressor.signature = meta["signature"]
        weights = load_file(str(folder / "compressor.safetensors"))
        compressor.load_state_dict({name: w.float() for name, w in weights.items()})
        return compressor.to(device=model.device, dtype=model.dtype).eval()


def load_compressor(name: str, model: T5ForConditionalGeneration) -> Compressor:
    """A shipped compressor (:data:`pidutils.zoo.COMPRESSOR_RECIPES`) for ``model``, on its device."""
    folder = compressor_path(name)
    if not (folder / "compressor.safetensors").exists():
        raise FileNotFoundError(f"{name} is not built; run: python -m pidutils.zoo train {name}")
    return Compressor.load(folder, model)


def compressor_report(name: str) -> dict:
    """A shipped compressor's record: its base, max_k, signature, recipe and training report."""
    return json.loads((compressor_path(name) / "compressor.json").read_text())


class Identity(torch.nn.Module):
    """The compressor that keeps every encoder state (k = n_s): the uncompressed memory, for checks."""

    def states(self, model: T5ForConditionalGeneration, input_ids: torch.Tensor, attention_mask: torch.Tensor, *,
               k: int) -> tuple[torch.Tensor, torch.Tensor]:
        if k != input_ids.shape[1]:
            raise ValueError(f"k must be n_s = {input_ids.shape[1]} for the identity compressor, got {k}")
        return encode(model, input_ids, attention_mask), attention_mask.bool()


def check_compressor(model: T5ForConditionalGeneration, compressor: Compressor | Identity, k: int) -> None:
    """k within what the compressor was trained for, and the compressor trained for this model."""
    check_t5(model)
    if isinstance(compressor, Identity):
        check_int("k", k, 1)
        return
    if not isinstance(compressor, Compressor):
        raise ValueError(f"compressor must be a pidutils.compression.Compressor or Identity, got "
                         f"{type(compressor).__name__}")
    check_int("k", k, 1, compressor.max_k)
    if not all(math.isclose(a, b, rel_tol=1e-3) for a, b in zip(signature(model), compressor.signature)):
        raise ValueError(f"compressor was trained for {compressor.base}, whose embeddings and cross-attention "
                         f"weights differ from this model's")


def compressed_memory(model: T5ForConditionalGeneration, compressor: Compressor | Identity, input_ids: torch.Tensor,
                      attention_mask: torch.Tensor, *, k: int) -> CrossMemory:
    """The documents as k vectors each, projected to every decoder layer's cross-attention K/V once."""
    return cross_memory(model, *compressor.states(model, input_ids, attention_mask, k=k))


# --- Decoding: PID over the compressed memory ---------------------------------------------------------

@torch.inference_mode()
def compressed_generate_ids(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                            compressor: Compressor | Identity, documents: Sequence[str],
                            prompts: Sequence[Sequence[str]], *, k: int, max_new_tokens: int = ANSWER_TOKENS,
                            return_scores: bool = False):
    """PID's greedy decoding with each document compressed to k vectors: (b*U, steps) new ids."""
    check_compressor(model, compressor, k)
    check_prompts(documents, prompts)
    check_int("max_new_tokens", max_new_tokens, 1)
    check_vocab(tokenizer, model)
    enc = tokenize_checked(tokenizer, list(documents), what="each document", truncation=False, device=model.device)
    ids, valid, _ = decoder_prefixes(model, tokenizer, prompts)
    memory = compressed_memory(model, compressor, enc["input_ids"], enc["attention_mask"], k=k)
    tokens, scores = greedy(model, memory, ids, valid, max_new_tokens=max_new_tokens, pad=tokenizer.pad_token_id)
    return (tokens, scores) if return_scores else tokens


def compressed_generate(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                        compressor: Compressor | Identity, documents: Sequence[str],
                        prompts: Sequence[Sequence[str]], *, k: int,
                        max_new_tokens: int = ANSWER_TOKENS) -> list[list[str]]:
    """Answer every prompt of every document from its k-vector memory; the answers per document."""
    ids = compressed_generate_ids(model, tokenizer, compressor, documents, prompts, k=k, max_new_tokens=max_new_tokens)
    return split_answers(tokenizer, ids, prompts)


@torch.inference_mode()
def compressed_reference(model: T5ForConditionalGeneration, tokenizer: PreTrainedTokenizerFast,
                         compressor: Compressor | Identity, document: str, prompt: str, *, k: int,
                         max_new_tokens: int = ANSWER_TOKENS) -> list[int]:
    """One prompt at a time, PIE-style, by Hugging Face's ``generate`` on the document's k vectors:
    the reference :func:`compressed_generate_ids` must equal. The new ids, up to ``</s>``."""
    check_compressor(model, compressor, k)
    enc = tokenize_checked(tokenizer, [document], what="the document", truncation=False, device=model.device)
    states, mask = compressor.states(model, enc["input_ids"], enc["attention_mask"], k=k)
    ids, valid, _ = decoder_prefixes(model, tokenizer, [[prompt]])
    out = model.generate(encoder_outputs=BaseModelOutput(last_hidden_state=states), attention_mask=mask.long(),
                         decoder_input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1,
                         pad_token_id=tokenizer.pad_token_id)
    return out[0, ids.shape[1]:].tolist()


# --- Training: k drawn per batch, cross-entropy or KL to the uncompressed model -----------------------

def draw_k(rng: random.Random, min_k: int, max_k: int) -> int:
    """A k for one batch, log-uniform on min_k..max_k: as many batches with k in 8-16 as in 32-64."""
    return min(max_k, max(min_k, round(2 ** rng.uniform(math.log2(min_k), math.log2(max_k)))))


def compression_batches(split, tokenizer: PreTrainedTokenizerFast, model: T5ForConditionalGeneration, *,
                        min_k: int, max_k: int, batch_size: int = 8) -> Callable[[random.Random], dict]:
    """PID's training batches (every slot of a dialogue a prompt in the decoder), each with its k."""
    next_pid = pid_batches(split, tokenizer, model, batch_size=batch_size)

    def next_batch(rng: random.Random) -> dict:
        return next_pid(rng) | {"k": torch.tensor(draw_k(rng, min_k, max_k))}

    return next_batch


def compression_loss(model: T5ForConditionalGeneration, compressor: Compressor, batch: dict, *,
                     objective: str) -> torch.Tensor:
    """The decoder (frozen) reads the batch's k-vector memory; on the answer tokens, either the
    cross-entropy of the gold tokens (``"ce"``, AutoCompressors') or KL(p || q) from the uncompressed
    model's next-token distributions p to the compressed ones q (``"kl"``, Wingate et al.'s)."""
    check_choice("objective", objective, OBJECTIVES)
    ids, mask, labels = batch["input_ids"], batch["attention_mask"], batch["labels"]
    decoder_ids = batch["decoder_input_ids"]
    bias = causal_bias(bias_table(model), 0, decoder_ids.shape[1], torch.ones_like(decoder_ids, dtype=torch.bool))
    memory = compressed_memory(model, compressor, ids, mask, k=int(batch["k"]))
    answer = labels != -100
    student = decoder_forward(model, decoder_ids, memory, bias)[answer]
    if objective == "ce":
        return F.cross_entropy(student, labels[answer])
    with torch.no_grad():
        teacher = decoder_forward(model, decoder_ids, encoded_memory(model, ids, mask), bias)[answer]
    return F.kl_div(F.log_softmax(student, -1), F.log_softmax(teacher, -1), log_target=True, reduction="batchmean")
