"""Tensors are made on the model's device (issue 18, item 2), checked on a CPU-only machine.

Two guards, since the tests never see a GPU:

- **static:** no pidutils function defaults a ``device`` parameter to the CPU, except the loaders
  that build a model where they are told;
- **at run time:** every public decoder runs under :class:`DevicesNamed`, which fails on any tensor
  factory (``torch.tensor``, ``torch.full``, ...) called from pidutils code without a
  ``torch.device``: no device means torch's default (the CPU beside a CUDA model), and a string
  such as ``"cpu"`` is a default someone wrote, not the device of a model or tensor (those are
  ``torch.device`` objects).
"""
from __future__ import annotations

import importlib
import inspect
import pathlib
import pkgutil
import sys

import pytest
import torch
from torch.overrides import TorchFunctionMode

import pidutils
from pidutils import decode, distribution, pid, pie, t5
from pidutils import pipelined as pl
from pidutils import speculative as sp
from pidutils.models import pick_dtype, random_t5

PACKAGE = pathlib.Path(next(iter(pidutils.__path__)))
# Loaders build or load their models on the device they are given; the CPU is their documented default.
LOADERS = {"pidutils.models.random_t5", "pidutils.zoo.load", "pidutils.pair.load_pair",
           "pidutils.pair.record_cost_ratio", "pidutils.fullstate.load_full_state"}
FACTORIES = {torch.tensor, torch.zeros, torch.ones, torch.full, torch.empty, torch.arange, torch.rand,
             torch.randn, torch.randint, torch.randperm, torch.eye, torch.linspace}


def functions():
    """Every function and method defined in a pidutils module, by qualified name."""
    for info in pkgutil.walk_packages(pidutils.__path__, "pidutils."):
        module = importlib.import_module(info.name)
        for _, obj in inspect.getmembers(module):
            members = [obj] + [m for _, m in inspect.getmembers(obj, inspect.isfunction)] if inspect.isclass(obj) \
                else [obj]
            for fn in members:
                if inspect.isfunction(fn) and fn.__module__ == info.name:
                    yield f"{info.name}.{fn.__qualname__}", fn


def test_no_function_defaults_a_device_to_the_cpu():
    cpu_defaults = sorted({name for name, fn in functions()
                           for p in inspect.signature(fn).parameters.values()
                           if "device" in p.name and p.default is not inspect.Parameter.empty
                           and p.default is not None and torch.device(p.default).type == "cpu"})
    assert [name for name in cpu_defaults if name not in LOADERS] == []


class DevicesNamed(TorchFunctionMode):
    """Fail on a tensor factory called from pidutils code without a ``torch.device``."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        caller = sys._getframe(1).f_code.co_filename
        if func in FACTORIES and caller.startswith(str(PACKAGE)) and not isinstance(kwargs.get("device"),
                                                                                    torch.device):
            line = sys._getframe(1).f_lineno
            raise AssertionError(f"torch.{func.__name__} at {caller}:{line} is given device="
                                 f"{kwargs.get('device')!r}, not the device of a model or tensor")
        return func(*args, **kwargs)


@pytest.fixture(scope="module")
def pair(model):
    draft = random_t5("t5-tiny", seed=4)
    draft.resize_token_embeddings(model.config.vocab_size)
    return model, draft.eval()


DOCUMENTS = ["user : i need a hotel in the north , cheap please .", "user : a taxi to the station at 17:00 ."]
PROMPTS = [["hotel-area", "hotel-price"], ["taxi-leave"]]


def decoders(model, draft, tokenizer):
    """Every public decoding function, each a call with no arguments."""
    ids = tokenizer(DOCUMENTS, padding=True, return_tensors="pt")["input_ids"]
    memory = pl.document_memory(model, tokenizer, DOCUMENTS)
    targets = [[[10, 11], [12]], [[13]]]
    return {
        "decode_n_tokens": lambda: decode.decode_n_tokens(model, ids, 3),
        "greedy_uncached": lambda: decode.greedy_uncached(model, ids, 3),
        "pie_generate": lambda: pie.pie_generate(model, tokenizer, DOCUMENTS, PROMPTS, 3),
        "pid_generate": lambda: pid.pid_generate(model, tokenizer, DOCUMENTS, PROMPTS, 3),
        "pid_generate copy": lambda: pid.pid_generate(model, tokenizer, DOCUMENTS, PROMPTS, 3, cross="copy"),
        "pid_reference": lambda: pid.pid_reference(model, tokenizer, DOCUMENTS, PROMPTS, 3),
        "pipelined_generate": lambda: pl.pipelined_generate(model, tokenizer, DOCUMENTS, 1, 6, 3),
        "pipelined uncached": lambda: pl.pipelined_generate_ids(model, tokenizer, DOCUMENTS, 2, 6, 3, cached=False),
        "algorithm1 cached_step": lambda: pl.algorithm1(pl.recording(pl.cached_step(model, memory, 2, 4), []),
                                                        2, 1, 6, 3, 0, 1, 0),
        "teacher_forced_logits": lambda: pl.teacher_forced_logits(
            model, memory, pl.training_layout(targets, [1, 2], 0, 1, 0, device=model.device)[0]),
        "sequential_generate": lambda: pl.sequential_generate(model, tokenizer, DOCUMENTS, 4),
        "t5.greedy": lambda: pl.sequential_decode(model, memory, 0, 4),
        "speculative greedy": lambda: sp.speculative_generate(model, draft, tokenizer, DOCUMENTS, 3, max_new_tokens=6),
        "speculative sampled": lambda: sp.speculative_generate(model, draft, tokenizer, DOCUMENTS, 3,
                                                               sp.Sampling(1.0, top_k=5, top_p=0.9), 6),
        "autoregressive sampled": lambda: sp.autoregressive(model, memory, sp.Sampling(1.0), 4,
                                                            generator=torch.Generator().manual_seed(0)),
        "sequence_distribution": lambda: distribution.sequence_distribution(model, t5.CrossMemory(
            [k[:1] for k in memory.keys], [v[:1] for v in memory.values], memory.bias[:1]), sp.Sampling(1.0), 2),
    }


DECODERS = ["decode_n_tokens", "greedy_uncached", "pie_generate", "pid_generate", "pid_generate copy",
            "pid_reference", "pipelined_generate", "pipelined uncached", "algorithm1 cached_step",
            "teacher_forced_logits", "sequential_generate", "t5.greedy", "speculative greedy",
            "speculative sampled", "autoregressive sampled", "sequence_distribution"]


@pytest.mark.parametrize("name", DECODERS)
def test_every_decoder_makes_its_tensors_on_the_models_device(pair, tokenizer, name):
    model, draft = pair
    run = decoders(model, draft, tokenizer)[name]
    with torch.inference_mode(), DevicesNamed():
        run()


def test_every_public_decoder_is_guarded(pair, tokenizer):
    assert sorted(decoders(*pair, tokenizer)) == sorted(DECODERS)


def test_the_guard_catches_a_device_that_is_not_the_models():
    """What ``algorithm1(..., device="cpu")``, its old default, did at every step."""
    docs, active = [pl.Schedule([[]], ended=[False])], [[0]]
    with DevicesNamed(), pytest.raises(AssertionError, match="torch.tensor at .*pipelined.py.* given device='cpu'"):
        pl.step_inputs(docs, active, 0, 0, 0, "cpu")
    with DevicesNamed():
        assert pl.step_inputs(docs, active, 0, 0, 0, torch.device("cpu")).ids.tolist() == [[0]]


def test_algorithm1_asks_for_a_device_when_its_step_carries_none():
    scripted = pl.scripted_step([[[10]]], 1, 1, 20)
    with pytest.raises(ValueError, match="device must be given"):
        pl.algorithm1(lambda new: scripted(new), 1, 1, 5, 2, 0, 1, 0)
    assert pl.algorithm1(lambda new: scripted(new), 1, 1, 5, 2, 0, 1, 0, device="cpu")[0].subsequences[0] == [10]


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_pick_dtype_asks_the_capability_of_its_device(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers, by emulation
    assert pick_dtype("cuda:1") == dtype
    assert asked == [torch.device("cuda:1")]
    assert pick_dtype("cpu") == torch.float32 and len(asked) == 1
