"""The benchmark experiments behind ``python -m pidutils.bench`` (one function per experiment).

Each experiment prints its figures as it measures them and returns them as a dict, which the
command line writes as JSON. Chapters call the same functions, so the book and the command agree.
"""
from __future__ import annotations

from collections.abc import Callable

import torch

from .bench import compare, describe, speedup, time_fn
from .checks import check_choice
from .cost import Device, forward_work
from .decode import decode_n_tokens, greedy_uncached
from .models import pick_device, random_t5, weights_per_decode_step

EXPERIMENTS: dict[str, Callable[[torch.device], dict]] = {}


def experiment(name: str) -> Callable:
    """Register ``fn(device) -> dict`` under ``name``."""
    def register(fn: Callable[[torch.device], dict]) -> Callable[[torch.device], dict]:
        EXPERIMENTS[name] = fn
        return fn
    return register


def run_experiment(name: str, device: str | None = None) -> dict:
    """Run one registered experiment on ``device`` (default: CUDA if present, else CPU)."""
    check_choice("experiment", name, EXPERIMENTS)
    return EXPERIMENTS[name](pick_device(device))


@experiment("decode-cache")
def decode_cache(device: torch.device, shape: str = "t5-small", batch: int = 1, source_len: int = 64,
                 new_tokens: int = 64, repeats: int = 5) -> dict:
    """Greedy decoding with the KV cache against rerunning the decoder each step (chapter 1)."""
    model = random_t5(shape, device=device)
    torch.manual_seed(0)
    input_ids = torch.randint(2, model.config.vocab_size, (batch, source_len), device=device)
    cached = decode_n_tokens(model, input_ids, new_tokens)
    if not torch.equal(cached, greedy_uncached(model, input_ids, new_tokens)):
        raise AssertionError("cached and uncached greedy decoding disagree")
    t = compare({"uncached": lambda: greedy_uncached(model, input_ids, new_tokens),
                 "cached": lambda: decode_n_tokens(model, input_ids, new_tokens)},
                device, warmup=1, repeats=repeats)
    step = decode_step_work(model, batch, source_len + new_tokens // 2)
    result = {
        "experiment": "decode-cache",
        "setup": describe(device, torch.float32, model=shape, batch=batch, source_len=source_len,
                          new_tokens=new_tokens),
        "uncached_s": t["uncached"].median, "cached_s": t["cached"].median,
        "speedup": speedup(t["uncached"], t["cached"]),
        "cached_tokens_per_s": batch * new_tokens / t["cached"].median,
        "cached_bandwidth_GBps": step.bytes * new_tokens / t["cached"].median / 1e9,
    }
    print(result["setup"])
    print(f"uncached decoding: {t['uncached']}")
    print(f"cached decoding:   {t['cached']}")
    print(f"KV-cache speed-up: {result['speedup']:.2f}x  "
          f"({result['cached_tokens_per_s']:.0f} generated tokens/s, "
          f"~{result['cached_bandwidth_GBps']:.1f} GB/s of weights and cache read)")
    return result


def decode_step_work(model, batch: int, context: int):
    """FLOPs and bytes of one cached decode step of ``model`` (see :func:`pidutils.cost.forward_work`)."""
    return forward_work(weights_per_decode_step(model), batch, 1, context, model.config.d_model,
                        model.config.num_decoder_layers, model.dtype.itemsize)


def decode_latency(model, device: torch.device, roof: Device, batch: int, new_tokens: int,
                   source_len: int = 64, repeats: int = 3) -> tuple[float, float]:
    """Measured and predicted seconds to decode ``new_tokens`` tokens for ``batch`` sequences.

    The prediction is the roofline's: each step takes at least max(FLOPs / peak, bytes / bandwidth)
    on ``roof``, the device as measured by :func:`pidutils.bench.measure_device` (chapter 1).
    """
    generator = torch.Generator().manual_seed(batch * 1000 + new_tokens)
    input_ids = torch.randint(2, model.config.vocab_size, (batch, source_len), generator=generator).to(device)
    measured = time_fn(lambda: decode_n_tokens(model, input_ids, new_tokens), device, warmup=1,
                       repeats=repeats).median
    predicted = sum(decode_step_work(model, batch, source_len + t).roofline_seconds(roof)
                    for t in range(new_tokens))
    return measured, predicted
