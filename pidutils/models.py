"""Hugging Face T5 models at the shapes the book measures, built offline from a config.

Latency depends on shapes, not on trained weights, so chapter 1 ("Why decoding is slow") and the
benchmarks use randomly initialised models at the published T5-small and T5-base shapes. Trained
checkpoints live in :mod:`pidutils.zoo`.
"""
from __future__ import annotations

import torch
from transformers import LlamaConfig, LlamaForCausalLM, T5Config, T5ForConditionalGeneration

from .checks import check_choice, check_device

# The published shapes of t5-small and t5-base (Raffel et al. 2020), and a tiny shape for tests.
SHAPES: dict[str, dict[str, int]] = {
    "t5-tiny": dict(d_model=128, d_ff=512, d_kv=32, num_heads=4, num_layers=2, vocab_size=1024),
    "t5-small": dict(d_model=512, d_ff=2048, d_kv=64, num_heads=8, num_layers=6, vocab_size=32128),
    "t5-base": dict(d_model=768, d_ff=3072, d_kv=64, num_heads=12, num_layers=12, vocab_size=32128),
}


# With T5's default initialisation a random decoder only echoes its start token (the tied embedding
# dominates the residual stream). A larger scale gives varied, well-conditioned greedy outputs:
# cached and uncached logits then agree to ~1e-6 relative (tests/test_decode.py).
INIT_FACTOR = 16.0


def pick_device(name: str | torch.device | None = None) -> torch.device:
    """The one place the book chooses its device: CUDA when present, else the CPU (chapter 1).

    A given ``name`` is checked (:func:`pidutils.checks.check_device`): ``"cpu"``, ``"cuda"`` or
    ``"cuda:N"`` where this machine has it, else a ``ValueError`` naming what it has.
    """
    if name is None:
        name = "cuda" if torch.cuda.is_available() else "cpu"
    return check_device("device", name)


def random_t5(shape: str = "t5-small", seed: int = 0, device: str | torch.device = "cpu",
              dtype: torch.dtype = torch.float32, **changes: int) -> T5ForConditionalGeneration:
    """A T5 with random weights at a named shape, in eval mode, using PyTorch's fused SDPA attention.

    ``changes`` override the shape's entries or the initialisation scale, e.g. ``vocab_size=6`` and
    ``initializer_factor=1.0`` for chapter 5's sampling test. The model is built where ``device``
    says (checked before any work, as :func:`pick_device` checks it).
    """
    check_choice("shape", shape, SHAPES)
    device = check_device("device", device)
    dims = {"initializer_factor": INIT_FACTOR} | SHAPES[shape] | changes
    config = T5Config(**dims, num_decoder_layers=dims["num_layers"],
                      decoder_start_token_id=0, pad_token_id=0, eos_token_id=1,
                      dropout_rate=0.0,
                      attn_implementation="sdpa")
    torch.manual_seed(seed)
    model = T5ForConditionalGeneration(config)
    return model.to(device=device, dtype=dtype).eval()


# Llama-style decoder-only shapes (chapter 7): a tiny one for tests, and one near TinyLlama's 1.1B
# (Zhang et al. 2024: 22 layers of width 2048, 32 query and 4 key-value heads), cut to 16 layers so
# that a GPU benchmark of random weights shows the bandwidth regime of the prefix's KV.
LLAMA_SHAPES: dict[str, dict[str, int]] = {
    "llama-test": dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                       num_key_value_heads=2),
    "llama-1b": dict(hidden_size=2048, intermediate_size=5632, num_hidden_layers=16, num_attention_heads=32,
                     num_key_value_heads=4),
}


def random_llama(shape: str, *, vocab_size: int, seed: int = 0, device: str | torch.device = "cpu",
                 dtype: torch.dtype = torch.float32, initializer_range: float = 0.5) -> LlamaForCausalLM:
    """A Llama-style causal LM with random weights at a named shape (chapter 7), in eval mode, with
    ``</s>`` = 1 and padding 0 as in the book's tokenizer. The wide initialisation (std 0.5) makes
    greedy decoding produce varied tokens instead of one token repeated."""
    check_choice("shape", shape, LLAMA_SHAPES)
    device = check_device("device", device)
    config = LlamaConfig(vocab_size=vocab_size, max_position_embeddings=1024, tie_word_embeddings=True,
                         pad_token_id=0, eos_token_id=1, bos_token_id=None, initializer_range=initializer_range,
                         attn_implementation="sdpa", **LLAMA_SHAPES[shape])
    torch.manual_seed(seed)
    return LlamaForCausalLM(config).to(device=device, dtype=dtype).eval()


def count_parameters(model: torch.nn.Module) -> int:
    """Number of distinct parameters (tied embeddings counted once)."""
    return sum(p.numel() for p in model.parameters())


BF16_CAPABILITY = (8, 0)  # Ampere and later compute in bf16; older GPUs (a T4 is 7.5) only emulate it


def pick_dtype(device: torch.device | str) -> torch.dtype:
    """The dtype chapter 1 measures in: bf16 on a GPU that has it (compute capability 8.0 and up),
    fp16 on older GPUs such as Colab's T4, fp32 on the CPU.

    ``torch.cuda.is_bf16_supported()`` says True on a T4 too, by emulation, so ask the capability.
    """
    device = torch.device(device)
    if device.type != "cuda":
        return torch.float32
    return torch.bfloat16 if torch.cuda.get_device_capability(device) >= BF16_CAPABILITY else torch.float16


def weights_per_decode_step(model: T5ForConditionalGeneration) -> int:
    """Parameters one decode step reads: the decoder blocks, its final norm and the LM head.

    The encoder is not touched, and the embedding table is only indexed (one row per token).
    """
    decoder = model.get_decoder()
    return (count_parameters(decoder.block) + count_parameters(decoder.final_layer_norm)
            + model.lm_head.weight.numel())


def weights_per_forward(model: T5ForConditionalGeneration) -> int:
    """Parameters a full forward pass (encoder and decoder, teacher-forced) reads."""
    return count_parameters(model.get_encoder().block) + weights_per_decode_step(model)
