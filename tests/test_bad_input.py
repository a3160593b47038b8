"""Bad numbers and devices are a ValueError naming the parameter and what is allowed, before any
work (issue 18, item 7): NaN and infinite sampling knobs, devices this machine does not have."""
import math

import pytest
import torch
from transformers import T5ForConditionalGeneration

from pidutils import bench, zoo
from pidutils.checks import check_device, check_float
from pidutils.models import pick_device, random_t5
from pidutils.speculative import Sampling

NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
# Devices no CPU-only machine has, or that are not devices at all, and the message each gets.
BAD_DEVICES = [
    ("tpu", "device must be one of 'cpu'; got 'tpu'"),
    ("meta", "device must be one of 'cpu'; got 'meta'"),
    (3.5, "device must be one of 'cpu'; got 3.5"),
    pytest.param("cuda", r"device must be one of 'cpu' \(no CUDA device is available here\); got 'cuda'",
                 marks=NO_CUDA),
    pytest.param("cuda:7", r"device must be one of 'cpu' \(no CUDA device is available here\); got 'cuda:7'",
                 marks=NO_CUDA),
]


@pytest.mark.parametrize("kwargs, match", [
    (dict(temperature=math.nan), "temperature must be a finite number, got nan"),
    (dict(temperature=math.inf), "temperature must be a finite number, got inf"),
    (dict(top_p=math.nan), "top_p must be a finite number, got nan"),
    (dict(temperature="1.0"), "temperature must be a number"),
])
def test_sampling_refuses_nan_and_inf(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Sampling(**kwargs)


def test_check_float_refuses_nan_and_inf_in_any_range():
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(ValueError, match="x must be a finite number"):
            check_float("x", value, 0.0)
    assert check_float("x", 3, 0.0) == 3.0


@pytest.mark.parametrize("device, match", BAD_DEVICES + [(None, "device must be one of 'cpu'; got None")])
def test_zoo_load_checks_the_device_before_loading_anything(monkeypatch, device, match):
    def no_loading(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded before the device was checked")
    monkeypatch.setattr(T5ForConditionalGeneration, "from_pretrained", no_loading)
    with pytest.raises(ValueError, match=match):
        zoo.load("pid-t5-tiny", device)


@pytest.mark.parametrize("device, match", BAD_DEVICES)
def test_every_device_argument_is_checked(device, match):
    for call in (lambda: pick_device(device), lambda: random_t5("t5-tiny", device=device),
                 lambda: bench.time_fn(lambda: None, device), lambda: bench.compare({"a": lambda: None}, device),
                 lambda: bench.measure_device(device, size=16, megabytes=1),
                 lambda: bench.peak_memory(lambda: None, device)):
        with pytest.raises(ValueError, match=match):
            call()


def test_good_devices_pass():
    assert check_device("device", "cpu") == torch.device("cpu") == pick_device(torch.device("cpu"))
    assert pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


@pytest.mark.parametrize("call, match", [
    (lambda: bench.time_fn(lambda: None, repeats=0), "repeats must be in"),
    (lambda: bench.time_fn(lambda: None, warmup=1.5), "warmup must be an integer"),
    (lambda: bench.measure_device("cpu", size=16, megabytes=1, repeats=0), "repeats must be in"),
    (lambda: bench.compare({"a": 3}), "fns must name at least one function"),
])
def test_timer_knobs_are_checked(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_a_timer_given_no_device_synchronises_the_cuda_device_if_there_is_one(monkeypatch):
    synced = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda device=None: synced.append(device))
    bench.time_fn(lambda: None, warmup=0, repeats=2)
    assert synced == [torch.device("cuda")] * 4  # before and after each timed call
