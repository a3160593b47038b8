"""The timer, the interleaved A/B comparison and the benchmark command line."""
import json
import subprocess
import sys
import time

import pytest

from pidutils import bench
from pidutils.bench.__main__ import main
from pidutils.experiments import decode_cache, decode_latency, decode_step_work, run_experiment
from pidutils.models import random_t5


def test_timing_median_and_quartiles():
    t = bench.Timing.of([3.0, 1.0, 2.0, 5.0, 4.0])
    assert (t.median, t.q1, t.q3) == (3.0, 2.0, 4.0)
    assert bench.speedup(bench.Timing.of([4.0]), bench.Timing.of([1.0])) == 4.0


def test_compare_interleaves_in_rotating_order():
    calls = []
    fns = {name: (lambda n=name: calls.append(n)) for name in "abc"}
    timings = bench.compare(fns, warmup=1, repeats=3)
    assert calls == list("abc") + list("abc") + list("bca") + list("cab")
    assert all(len(t.samples) == 3 for t in timings.values())


def test_compare_interleaves_parts_and_sums_them():
    """A function in parts (one batch each) is interleaved part by part with the others, in a
    rotating order, and each sample is the sum of its parts' times."""
    calls = []
    fns = {"a": [lambda: calls.append("a0"), lambda: calls.append("a1")], "b": lambda: calls.append("b")}
    timings = bench.compare(fns, warmup=0, repeats=2)
    assert calls == ["a0", "b", "a1", "b", "a0", "a1"]
    assert all(len(t.samples) == 2 for t in timings.values())
    slow = bench.compare({"one": [lambda: time.sleep(0.01)], "three": [lambda: time.sleep(0.01)] * 3},
                         warmup=0, repeats=1)
    assert slow["one"].median >= 0.009 and slow["three"].median >= 0.027  # three sleeps of 10 ms: the parts summed


def test_measure_device_gives_a_positive_roofline():
    roof = bench.measure_device("cpu", size=128, megabytes=8)
    assert roof.peak_flops > 0 and roof.bandwidth > 0 and "measured" in roof.name


def test_describe_names_device_dtype_and_shapes():
    import torch
    line = bench.describe("cpu", torch.float16, batch=4, U=30)
    assert "CPU" in line and "float16" in line and "batch=4, U=30" in line


def check_decode_cache_figures(result, *, shape, batch, source_len, new_tokens):
    """Every figure of the decode-cache experiment, re-derived from the times it reports."""
    assert result["experiment"] == "decode-cache" and result["uncached_s"] > 0 and result["cached_s"] > 0
    assert result["speedup"] == pytest.approx(result["uncached_s"] / result["cached_s"], rel=1e-12)
    assert result["cached_tokens_per_s"] == pytest.approx(batch * new_tokens / result["cached_s"], rel=1e-12)
    step = decode_step_work(random_t5(shape), batch, source_len + new_tokens // 2)
    assert result["cached_bandwidth_GBps"] == pytest.approx(step.bytes * new_tokens / result["cached_s"] / 1e9)
    assert f"model={shape}" in result["setup"] and f"new_tokens={new_tokens}" in result["setup"]


def test_decode_cache_experiment_reports_a_speedup(capsys):
    import torch
    result = decode_cache(torch.device("cpu"), shape="t5-tiny", batch=2, new_tokens=16, repeats=1)
    check_decode_cache_figures(result, shape="t5-tiny", batch=2, source_len=64, new_tokens=16)
    out = capsys.readouterr().out
    assert f"KV-cache speed-up: {result['speedup']:.2f}x" in out
    assert f"({result['cached_tokens_per_s']:.0f} generated tokens/s" in out


def test_shared_prefix_experiment_times_the_repeated_prefix_only_up_to_its_row_limit(capsys):
    """``bench shared-prefix`` on the shipped prefix-llama-tiny, two points: the repeated prefix is
    timed at 2 x 2 sequences and left out at 2 x 60, above ``REPEATED_ROWS``; every row is printed."""
    import torch
    from pidutils.experiments import REPEATED_ROWS, shared_prefix_speedups
    result = shared_prefix_speedups(torch.device("cpu"), Us=(2, 60), batches=(2,), repeats=1)
    small, large = result["rows"]
    assert (small["U"], small["b"], large["U"]) == (2, 2, 60) and 2 * 60 > REPEATED_ROWS
    assert "repeated_s" in small and "repeated_s" not in large
    assert large["cached_prefix_kv_bytes"] == 60 * large["shared_prefix_kv_bytes"]
    out = capsys.readouterr().out
    assert "prefix-llama-tiny" in result["setup"] and out.count("b=2 U=") == 2 and "repeated" in out.splitlines()[1]


def test_compression_experiment_reports_quality_memory_and_time(capsys):
    """``bench compression`` on the shipped cross-entropy compressor, small: its quality at two k on 8
    test dialogues, the slots lost, one timed row whose memory bytes are the cost model's, and the
    store of 10,000 documents in proportion to k."""
    import torch
    from pidutils.experiments import KEPT_DOCUMENTS, compression_tradeoff
    result = compression_tradeoff(torch.device("cpu"), ks=(8, 32), timed_ks=(8,), dialogues=8, repeats=1,
                                  objectives=("ce",))
    for objective in ("ce",):
        assert [row["k"] for row in result[objective]["quality"]] == [8, 32]
        assert all(len(row["slots"]) == 30 for row in result[objective]["quality"])
    (row,) = result["timed"]
    assert row["compressed_memory_bytes"] == row["compressed_memory_predicted"]
    assert row["pid_memory_bytes"] == row["pid_memory_predicted"] and row["U"] == 30 and row["b"] == 8
    kept = result["kept_documents"]
    assert kept["k=8"] * kept["n_s"] == kept["uncompressed"] * 8 and KEPT_DOCUMENTS == 10_000
    assert "uncompressed PID on 8 test dialogues" in capsys.readouterr().out


def test_decode_latency_prediction_is_a_lower_bound(tiny_model):
    import torch
    roof = bench.measure_device("cpu", size=256, megabytes=32)
    measured, predicted = decode_latency(tiny_model, torch.device("cpu"), roof, batch=2, new_tokens=4,
                                         repeats=1)
    assert 0 < predicted < measured
    # the prediction is the roofline's time of each of the four cached steps, context growing by one
    assert predicted == pytest.approx(sum(decode_step_work(tiny_model, 2, 64 + t).roofline_seconds(roof)
                                          for t in range(4)))


def test_command_line_writes_json(tmp_path, capsys):
    path = tmp_path / "out.json"
    assert main(["decode-cache", "--device", "cpu", "--json", str(path)]) == 0
    figures = json.loads(path.read_text())
    assert figures["experiment"] == "decode-cache" and figures["speedup"] > 1
    check_decode_cache_figures(figures, shape="t5-small", batch=1, source_len=64, new_tokens=64)  # the defaults
    assert "KV-cache speed-up" in capsys.readouterr().out


def test_the_timers_import_nothing_that_uses_them():
    code = "import sys, pidutils.bench; print(sorted(m for m in sys.modules if m.startswith('pidutils')))"
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "pidutils.experiments" not in loaded and "pidutils.bench.__main__" not in loaded


@pytest.mark.parametrize("call, match", [
    (lambda: bench.compare({"a": lambda: None}, repeats=0), "repeats must be in"),
    (lambda: bench.compare({"a": lambda: None}, warmup=-1), "warmup must be in"),
    (lambda: bench.compare({}), "fns must name"),
    (lambda: run_experiment("nope"), "experiment must be one of"),
    (lambda: bench.measure_device("cpu", size=0), "size must be in"),
])
def test_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()
