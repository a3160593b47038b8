"""PIE and PID side by side: workloads, predicted work, measured latency and peak memory."""
import pytest
import torch

from pidutils import bench, data, multiprompt, plots, widgets
from pidutils.cost import Work


def total(passes: list[Work]) -> Work:
    return Work(sum(w.flops for w in passes), sum(w.bytes for w in passes))


def test_workload_takes_the_first_dialogues_and_slots(corpus):
    docs, prompts = multiprompt.workload(corpus["test"], b=2, U=3)
    assert docs == corpus["test"]["dialogue"][:2] and prompts == [data.SLOTS[:3]] * 2
    with pytest.raises(ValueError, match="U must be in \\[1, 30\\]"):
        multiprompt.workload(corpus["test"], b=1, U=31)
    with pytest.raises(ValueError, match="b must be in \\[1, 5\\]"):
        multiprompt.workload(corpus["test"], b=6, U=1)


def test_every_method_gives_the_same_answers_on_one_model(model, tokenizer, corpus):
    docs, prompts = multiprompt.workload(corpus["test"], b=2, U=4)
    answers = {m: multiprompt.answer_fn(m, model, tokenizer, docs, prompts, 3)() for m in multiprompt.METHODS}
    assert answers["PID-copy"] == answers["PID-shared"]
    assert all(len(a) == 4 for a in answers["PIE"])


def test_encoder_tokens_are_U_times_the_document_plus_prompts_for_pie(tokenizer, corpus):
    docs, prompts = multiprompt.workload(corpus["test"], b=1, U=5)
    n_s = len(tokenizer(docs[0])["input_ids"])
    n_p = sum(len(tokenizer(f"{p} :", add_special_tokens=False)["input_ids"]) for p in prompts[0])
    assert multiprompt.encoder_tokens("PIE", tokenizer, docs, prompts) == 5 * n_s + n_p
    assert multiprompt.encoder_tokens("PID-shared", tokenizer, docs, prompts) == n_s


def test_predicted_work_orders_the_methods(model):
    shape = {"n_s": 300, "n_p": 2, "n_t": 4}
    work = {m: total(multiprompt.predicted_work(m, model, 1, 30, **shape)) for m in multiprompt.METHODS}
    assert work["PID-shared"].flops < work["PID-copy"].flops < work["PIE"].flops
    assert work["PID-shared"].bytes < work["PID-copy"].bytes < work["PIE"].bytes
    one = {m: total(multiprompt.predicted_work(m, model, 1, 1, **shape)) for m in ("PID-copy", "PID-shared")}
    assert one["PID-copy"] == one["PID-shared"]  # with U = 1 there is nothing to share
    # PIE's encoder pass processes U (n_s + n_p) tokens: 30x the flops of PID's n_s, and a bit more.
    enc_pie = multiprompt.predicted_work("PIE", model, 1, 30, **shape)[0].flops
    enc_pid = multiprompt.predicted_work("PID-shared", model, 1, 30, **shape)[0].flops
    assert 30 < enc_pie / enc_pid < 35
    assert len(multiprompt.predicted_work("PIE", model, 1, 30, **shape)) == 1 + shape["n_t"]
    with pytest.raises(ValueError, match="n_t must be in"):
        multiprompt.predicted_work("PIE", model, 1, 30, 300, 2, 0)


def test_peak_memory_sees_a_known_allocation():
    def allocate():
        x = torch.ones(1_000_000)  # 4 MB
        y = x * 2  # 4 MB more while x is alive
        return float(y.sum())

    peak = bench.peak_memory(allocate, "cpu")
    assert 8_000_000 <= peak < 9_000_000


def test_chapter_latency_callbacks_measure_and_plot_every_method(model, tokenizer, corpus):
    roof = bench.measure_device("cpu", size=128, megabytes=8)
    live = plots.LivePlot(xlabel="U")
    models = dict.fromkeys(multiprompt.METHODS, model)

    def measure_all(U):  # chapter 3's callback
        for m in multiprompt.METHODS:
            measured, predicted = multiprompt.latency(m, models[m], tokenizer, corpus["test"], roof, U=U, repeats=1)
            live.add(m, U, measured * 1e3, predicted * 1e3)

    panel = widgets.slider_panel(measure_all, U=(1, 30, 1, 10))
    panel.controls["U"].value = 2
    panel.controls["U"].value = 6
    assert set(live.measured) == set(multiprompt.METHODS)
    assert all(sorted(points) == [2, 6] for points in live.measured.values())
    assert all(live.predicted[m][6] < live.measured[m][6] for m in multiprompt.METHODS)


def test_pid_and_pie_experiments_run_on_the_shipped_models(capsys):
    from pidutils.experiments import pid_speedups, pie_latency
    device = torch.device("cpu")
    pid_rows = pid_speedups(device, Us=(2,), batches=(1,), repeats=1)["rows"]
    assert [(r["b"], r["U"]) for r in pid_rows] == [(1, 2)]
    assert pid_rows[0]["flops_ratio"] < 1 and pid_rows[0]["PID-shared_peak_bytes"] > 0
    pie_rows = pie_latency(device, Us=(1, 2), repeats=1)["rows"]
    assert pie_rows[1]["encoder_tokens"] > pie_rows[0]["encoder_tokens"]
    assert "vs PIE" in capsys.readouterr().out
