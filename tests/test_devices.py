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
from pidutils import batching, decode, distribution, drafts, measure, pid, pie, sequential, t5
from pidutils import pipelined as pl
from pidutils import speculative as sp
from pidutils.models import pick_dtype, random_t5

PACKAGE = pathlib.Path(next(iter(pidutils.__path__)))
# Loaders build or load their models on the device they are given; the CPU is their documented default.
LOADERS = {"pidutils.models.random_t5", "pidutils.models.random_llama", "pidutils.zoo.load", "pidutils.measure.load_testbed",
           "pidutils.drafts.load_speculative", "pidutils.drafts.record_cost_ratio",
           "pidutils.medusa.load_heads", "pidutils.trees.load_medusa", "pidutils.zoo.load_body"}
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


def test_the_static_check_reads_every_module():
    """The walk sees the engine, the methods and the measurements, not only the modules it was written for."""
    seen = {name.rsplit(".", 1)[0] for name, _ in functions()}
    for module in ("batching", "t5", "sequential", "pie", "pid", "pipelined", "speculative", "measure", "drafts",
                   "multiprompt", "distribution", "experiments", "zoo", "zoo.training"):
        assert any(m == f"pidutils.{module}" or m.startswith(f"pidutils.{module}.") for m in seen), module
    assert {"pidutils.measure.load_testbed", "pidutils.drafts.load_speculative"} <= {name for name, _ in functions()}


def test_no_function_defaults_a_device_to_the_cpu():
    cpu_defaults = sorted({name for name, fn in functions()
                           for p in inspect.signature(fn).parameters.values()
                           if "device" in p.name and p.default is not inspect.Parameter.empty
                           and p.default is not None and torch.device(p.default).type == "cpu"})
    assert [name for name in cpu_defaults if name not in LOADERS] == []
    assert sorted(LOADERS) == sorted(name for name in cpu_defaults if name in LOADERS)  # no stale exemption


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


def random_testbed(model, draft, tokenizer):
    """The random models in every role of chapters 4 and 5, on the two documents."""
    roles = {"sequential": model, "pipelined": model, "target": model, "draft": draft}
    return measure.Testbed(roles, {role: f"random {role}" for role in roles}, tokenizer, list(DOCUMENTS),
                           [["hotel-area : north", "hotel-pricerange : cheap"], ["taxi-leaveat : 17:00"]],
                           [["none"] * 30, ["none"] * 30])


def decoders(model, draft, tokenizer):
    """Every public decoding function, each a call with no arguments."""
    ids = tokenizer(DOCUMENTS, padding=True, return_tensors="pt")["input_ids"]
    memory = t5.document_memory(model, tokenizer, DOCUMENTS)
    targets = [[[10, 11], [12]], [[13]]]
    bed = random_testbed(model, draft, tokenizer)
    chapter4 = measure.full_state_ways(hugging_face=False)
    chapter5 = measure.speculative_ways([2], sampling=sp.Sampling(1.0), hugging_face=False)
    one = t5.CrossMemory([k[:1] for k in memory.keys], [v[:1] for v in memory.values], memory.bias[:1])
    return {
        "batching.tokenize_checked": lambda: batching.tokenize_checked(tokenizer, DOCUMENTS, what="each document",
                                                                       truncation=False, device=model.device),
        "decode_n_tokens": lambda: decode.decode_n_tokens(model, ids, 3),
        "greedy_uncached": lambda: decode.greedy_uncached(model, ids, 3),
        "pie_generate": lambda: pie.pie_generate(model, tokenizer, DOCUMENTS, PROMPTS, max_new_tokens=3),
        "pie_loop": lambda: pie.pie_loop(model, tokenizer, DOCUMENTS, PROMPTS, max_new_tokens=3),
        "pid_generate": lambda: pid.pid_generate(model, tokenizer, DOCUMENTS, PROMPTS, max_new_tokens=3),
        "pid_generate copy": lambda: pid.pid_generate(model, tokenizer, DOCUMENTS, PROMPTS, max_new_tokens=3,
                                                      cross="copy"),
        "pid_reference": lambda: pid.pid_reference(model, tokenizer, DOCUMENTS, PROMPTS, max_new_tokens=3),
        "pipelined_generate": lambda: pl.pipelined_generate(model, tokenizer, DOCUMENTS, delta_t=1, time_max=6,
                                                            sub_max=3),
        "pipelined uncached": lambda: pl.pipelined_generate_ids(model, tokenizer, DOCUMENTS, delta_t=2, time_max=6,
                                                                sub_max=3, cached=False),
        "algorithm1 cached_step": lambda: pl.algorithm1(
            pl.recording(pl.cached_step(model, memory, rows=2, capacity=4), []), b=2, delta_t=1, time_max=6,
            sub_max=3, bos=0, eos=1),
        "teacher_forced_logits": lambda: pl.teacher_forced_logits(
            model, memory, pl.training_layout(targets, [1, 2], bos=0, eos=1, pad=0, device=model.device)[0]),
        "sequential_generate": lambda: sequential.sequential_generate(model, tokenizer, DOCUMENTS, max_new_tokens=4),
        "t5.greedy": lambda: sequential.sequential_decode(model, memory, pad=0, max_new_tokens=4),
        "speculative greedy": lambda: sp.speculative_generate(model, draft, tokenizer, DOCUMENTS, gamma=3,
                                                              max_new_tokens=6),
        "speculative sampled": lambda: sp.speculative_generate(model, draft, tokenizer, DOCUMENTS, gamma=3,
                                                               sampling=sp.Sampling(1.0, top_k=5, top_p=0.9),
                                                               max_new_tokens=6),
        "autoregressive sampled": lambda: sp.autoregressive(model, memory, sampling=sp.Sampling(1.0), max_new_tokens=4,
                                                            pad=0, generator=torch.Generator().manual_seed(0)),
        "sequence_distribution": lambda: distribution.sequence_distribution(model, one, sp.Sampling(1.0), 2),
        "speculative_samples": lambda: distribution.speculative_samples(
            model, draft, one.repeated(3), one.repeated(3), 2, sp.Sampling(1.0), 3, 1,
            torch.Generator().manual_seed(0)),
        "measure.outcomes chapter 4": lambda: measure.outcomes(bed, chapter4, b=2),
        "measure.outcomes chapter 5": lambda: measure.outcomes(bed, chapter5, b=2),
        "measure.steps_taken": lambda: [measure.steps_taken(bed, way) for way in chapter4.values()],
        "drafts.alpha": lambda: drafts.alpha(bed.select(0, 1), gamma=2),
        "drafts.trace": lambda: drafts.trace(bed, 0, gamma=2, sampling=sp.Sampling(1.0)),
        "drafts.disagreements": lambda: drafts.disagreements(bed),
        "drafts.verify_cost": lambda: drafts.verify_cost(bed, gamma=2, context=3, repeats=1),
    }


DECODERS = ["batching.tokenize_checked", "decode_n_tokens", "greedy_uncached", "pie_generate", "pie_loop", "pid_generate", "pid_generate copy",
            "pid_reference", "pipelined_generate", "pipelined uncached", "algorithm1 cached_step",
            "teacher_forced_logits", "sequential_generate", "t5.greedy", "speculative greedy",
            "speculative sampled", "autoregressive sampled", "sequence_distribution", "speculative_samples",
            "measure.outcomes chapter 4", "measure.outcomes chapter 5", "measure.steps_taken", "drafts.alpha",
            "drafts.trace", "drafts.disagreements", "drafts.verify_cost"]


@pytest.mark.parametrize("name", DECODERS)
def test_every_decoder_makes_its_tensors_on_the_models_device(pair, tokenizer, name):
    model, draft = pair
    run = decoders(model, draft, tokenizer)[name]
    with torch.inference_mode(), DevicesNamed():
        run()


def test_every_public_decoder_is_guarded(pair, tokenizer):
    assert sorted(decoders(*pair, tokenizer)) == sorted(DECODERS)


def test_the_guard_catches_a_device_that_is_not_the_models():
    """What ``algorithm1(..., device="cpu")`` would do if it passed the string on: Algorithm 1's state
    (:class:`pidutils.pipelined.Progress`) made on a device someone wrote, not a model's."""
    knobs = dict(sub_max=2, bos=0, eos=1)
    with DevicesNamed(), pytest.raises(AssertionError, match=r"torch\.\w+ at .*pipelined.py.* given device='cpu'"):
        pl.Progress(1, device="cpu", **knobs)
    with DevicesNamed():
        state = pl.Progress(1, device=torch.device("cpu"), **knobs)
        assert state.last.device == torch.device("cpu")
        # algorithm1 turns a device it is given into a torch.device before it makes anything
        scripted = pl.scripted_step([[[10]]], delta_t=1, eos=1, vocab_size=20)
        schedule = pl.algorithm1(lambda new: scripted(new), b=1, delta_t=1, time_max=5, sub_max=2, bos=0, eos=1,
                                 device="cpu")[0]
        assert schedule.subsequences[0] == [10]


def test_algorithm1_asks_for_a_device_when_its_step_carries_none():
    scripted = pl.scripted_step([[[10]]], delta_t=1, eos=1, vocab_size=20)
    knobs = dict(b=1, delta_t=1, time_max=5, sub_max=2, bos=0, eos=1)
    with pytest.raises(ValueError, match="device must be given"):
        pl.algorithm1(lambda new: scripted(new), **knobs)
    assert pl.algorithm1(lambda new: scripted(new), **knobs, device="cpu")[0].subsequences[0] == [10]
    assert pl.algorithm1(scripted, **knobs)[0].subsequences[0] == [10]  # the scripted step carries the CPU


@pytest.mark.parametrize("capability, dtype", [((7, 5), torch.float16), ((8, 0), torch.bfloat16),
                                               ((9, 0), torch.bfloat16), ((6, 1), torch.float16)])
def test_pick_dtype_asks_the_capability_of_its_device(monkeypatch, capability, dtype):
    asked = []
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: asked.append(device) or capability)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)  # what a T4 answers, by emulation
    assert pick_dtype("cuda:1") == dtype
    assert asked == [torch.device("cuda:1")]
    assert pick_dtype("cpu") == torch.float32 and len(asked) == 1
