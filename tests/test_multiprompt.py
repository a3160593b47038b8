"""PIE and PID side by side: workloads, predicted work, measured latency and peak memory."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pidutils import bench, data, multiprompt, pid, plots, widgets
from pidutils.cost import Work
from pidutils.models import random_t5
from pidutils.pie import pie_generate, pie_loop


def total(passes: list[Work]) -> Work:
    return Work(sum(w.flops for w in passes), sum(w.bytes for w in passes))


def test_workload_takes_the_first_dialogues_and_slots(corpus):
    docs, prompts = multiprompt.workload(corpus["test"], b=2, U=3)
    assert docs == corpus["test"]["dialogue"][:2] and prompts == [data.SLOTS[:3]] * 2
    with pytest.raises(ValueError, match="U must be in \\[1, 30\\]"):
        multiprompt.workload(corpus["test"], b=1, U=31)
    with pytest.raises(ValueError, match="b must be in \\[1, 5\\]"):
        multiprompt.workload(corpus["test"], b=6, U=1)


def reference_answers(model, tokenizer, docs, prompts, max_new_tokens):
    """PID's answers by Hugging Face's own path (:func:`pidutils.pid.pid_reference`), as text."""
    ids, _ = pid.pid_reference(model, tokenizer, docs, prompts, max_new_tokens=max_new_tokens)
    return pid.split_answers(tokenizer, ids, prompts)


def test_every_method_gives_the_same_answers_on_one_model(model, tokenizer, corpus):
    docs, prompts = multiprompt.workload(corpus["test"], b=2, U=4)
    answers = {m: multiprompt.answer_fn(m, model, tokenizer, docs, prompts, max_new_tokens=3)()
               for m in multiprompt.EVERY_METHOD}
    assert answers["PID-copy"] == answers["PID-shared"] == reference_answers(model, tokenizer, docs, prompts, 3)
    assert answers["PIE"] == answers[multiprompt.REFERENCE]  # the book's loop gives generate's answers
    assert answers["PIE"] == pie_generate(model, tokenizer, docs, prompts, max_new_tokens=3)
    assert all(len(a) == 4 for a in answers["PIE"])
    # not a vacuous agreement: the answers differ from prompt to prompt, and PIE's from PID's
    assert all(len(set(a)) > 1 for a in answers["PIE"] + answers["PID-shared"])
    assert answers["PIE"] != answers["PID-shared"]


def test_pie_on_the_books_loop_is_hugging_faces_greedy_decoding(model, tokenizer, corpus):
    docs = list(corpus["test"]["dialogue"][:3])
    prompts = [data.SLOTS[:3], data.SLOTS[7:9], data.SLOTS[20:25]]  # a different U per document
    ours = pie_loop(model, tokenizer, docs, prompts, max_new_tokens=6)
    assert [len(a) for a in ours] == [3, 2, 5]
    assert ours == pie_generate(model, tokenizer, docs, prompts, max_new_tokens=6)
    # each answer is the one its prompt gets alone: batching and padding change nothing
    assert ours == [[pie_loop(model, tokenizer, [d], [[p]], max_new_tokens=6)[0][0] for p in ps]
                    for d, ps in zip(docs, prompts)]
    with pytest.raises(ValueError, match="same batch size"):
        pie_loop(model, tokenizer, docs, prompts[:2])
    with pytest.raises(ValueError, match="max_new_tokens must be in"):
        pie_loop(model, tokenizer, docs, prompts, max_new_tokens=0)
    with pytest.raises(ValueError, match="method must be one of"):
        multiprompt.answer_fn("PIE-beam", model, tokenizer, docs, prompts)


def hub_sized_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer of 32,100 tokens with T5's special ids, as every hub T5 has."""
    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(32_100 - 3)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   model_max_length=512)


def test_every_method_runs_a_model_at_t5_smalls_configuration_with_a_hub_sized_tokenizer():
    tokenizer = hub_sized_tokenizer()
    model = random_t5("t5-small", num_layers=1)  # t5-small's widths and vocab_size 32,128, one layer
    assert len(tokenizer) == 32_100 and model.config.vocab_size == 32_128
    docs = [" ".join(f"w{(37 * i + 11 * d) % 31000}" for i in range(20 + 5 * d)) for d in range(2)]
    prompts = [["w5 w6", "w7"], ["w8", "w9 w10", "w11"]]
    answers = {m: multiprompt.answer_fn(m, model, tokenizer, docs, prompts, max_new_tokens=3)()
               for m in multiprompt.EVERY_METHOD}
    assert answers["PIE"] == answers[multiprompt.REFERENCE]
    assert answers["PID-copy"] == answers["PID-shared"] == reference_answers(model, tokenizer, docs, prompts, 3)
    assert [len(a) for a in answers["PID-shared"]] == [2, 3]


def test_encoder_tokens_are_U_times_the_document_plus_prompts_for_pie(tokenizer, corpus):
    docs, prompts = multiprompt.workload(corpus["test"], b=1, U=5)
    n_s = len(tokenizer(docs[0])["input_ids"])
    n_p = sum(len(tokenizer(f"{p} :", add_special_tokens=False)["input_ids"]) for p in prompts[0])
    assert multiprompt.encoder_tokens("PIE", tokenizer, docs, prompts) == 5 * n_s + n_p
    assert multiprompt.encoder_tokens("PID-shared", tokenizer, docs, prompts) == n_s


def test_predicted_work_orders_the_methods(model):
    shape = {"n_s": 300, "n_p": 2, "n_t": 4}
    work = {m: total(multiprompt.predicted_work(m, model, 1, 30, **shape)) for m in multiprompt.LOOP_METHODS}
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
    # Hugging Face's generate does PIE's work
    assert multiprompt.predicted_work(multiprompt.REFERENCE, model, 1, 30, **shape) == \
        multiprompt.predicted_work("PIE", model, 1, 30, **shape)


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
    models = dict.fromkeys(multiprompt.LOOP_METHODS, model)

    def measure_all(U):  # chapter 3's callback
        for m in multiprompt.LOOP_METHODS:
            measured, predicted = multiprompt.latency(m, models[m], tokenizer, corpus["test"], roof, U=U, repeats=1)
            live.add(m, U, measured * 1e3, predicted * 1e3)

    panel = widgets.slider_panel(measure_all, U=(1, 30, 1, 10))
    panel.controls["U"].value = 2
    panel.controls["U"].value = 6
    assert set(live.measured) == set(multiprompt.LOOP_METHODS)
    assert all(sorted(points) == [2, 6] for points in live.measured.values())
    assert all(live.predicted[m][6] < live.measured[m][6] for m in multiprompt.LOOP_METHODS)


def test_pid_and_pie_experiments_run_on_the_shipped_models(capsys):
    """Small arguments, every figure re-derived: the speed-ups are ratios of the reported times, the
    FLOPs ratio the one :func:`pidutils.multiprompt.predicted_work` gives at the shapes of the answers,
    the optimal batch the rows' own, and the methods agree on the shipped models."""
    from pidutils import zoo
    from pidutils.experiments import _optimal_batch, pid_speedups, pie_latency
    device = torch.device("cpu")
    result = pid_speedups(device, Us=(2,), batches=(1, 2), repeats=1)
    pid_rows = result["rows"]
    assert [(r["b"], r["U"]) for r in pid_rows] == [(1, 2), (2, 2)]
    pid_checkpoint = zoo.load("pid-t5-tiny")
    methods = {"PIE": zoo.load("pie-t5-tiny"), "PID-copy": pid_checkpoint, "PID-shared": pid_checkpoint}
    split = zoo.test_split("pid-t5-tiny")
    for row in pid_rows:
        assert all(row[f"{m}_s"] > 0 for m in multiprompt.EVERY_METHOD)
        assert row["speedup_vs_pie"] == pytest.approx(row["PIE_s"] / row["PID-shared_s"], rel=1e-12)
        assert row["speedup_vs_copy"] == pytest.approx(row["PID-copy_s"] / row["PID-shared_s"], rel=1e-12)
        assert row["speedup_vs_generate"] == pytest.approx(row["PIE-generate_s"] / row["PID-shared_s"], rel=1e-12)
        assert all(row[f"{m}_peak_bytes"] > 0 for m in multiprompt.LOOP_METHODS)
        docs, prompts = multiprompt.workload(split, row["b"], row["U"])
        answers = {m: multiprompt.answer_fn(m, model, tok, docs, prompts)() for m, (model, tok) in methods.items()}
        pid_model, pid_tok = methods["PID-shared"]
        assert answers["PID-shared"] == answers["PID-copy"] == reference_answers(pid_model, pid_tok, docs, prompts,
                                                                                 pid.ANSWER_TOKENS)
        flops = {m: sum(w.flops for w in multiprompt.predicted_work(
            m, methods[m][0], row["b"], row["U"], **multiprompt.shape_of(methods[m][1], docs, prompts, answers[m])))
                 for m in methods}
        assert row["flops_ratio"] == pytest.approx(flops["PID-shared"] / flops["PIE"]) and row["flops_ratio"] < 1
    optimal = result["optimal"]
    assert optimal == _optimal_batch(pid_rows, 2) and optimal["U"] == 2 and optimal["PIE_b"] in (1, 2)
    assert optimal["speedup"] == pytest.approx(optimal["PIE_s_per_dialogue"] / optimal["PID-shared_s_per_dialogue"])
    best = min(pid_rows, key=lambda r: r["PID-shared_s"] / r["b"])
    assert optimal["PID-shared_s_per_dialogue"] == pytest.approx(best["PID-shared_s"] / best["b"])
    model, tokenizer = zoo.load("pie-t5-tiny")
    pie_rows = pie_latency(device, Us=(1, 2), repeats=1)["rows"]
    assert [r["U"] for r in pie_rows] == [1, 2]
    for row in pie_rows:
        docs, prompts = multiprompt.workload(zoo.test_split("pie-t5-tiny"), 1, row["U"])
        assert row["encoder_tokens"] == multiprompt.encoder_tokens("PIE", tokenizer, docs, prompts) == \
            sum(len(tokenizer(data.pie_source(p, docs[0]))["input_ids"]) for p in prompts[0])
        assert row["PIE_s"] > 0 and row["PIE-generate_s"] > 0
    assert pie_rows[1]["encoder_tokens"] > pie_rows[0]["encoder_tokens"]
    out = capsys.readouterr().out
    assert "vs PIE" in out and "optimal batch" in out


def test_the_pid_experiment_refuses_methods_that_disagree(monkeypatch):
    """The experiment times nothing whose answers differ: PID-copy's answers changed, it stops."""
    from pidutils import experiments
    real = experiments.answer_fn

    def wrong_copy(method, *args, **kwargs):
        run = real(method, *args, **kwargs)
        return (lambda: [[a + " x" for a in row] for row in run()]) if method == "PID-copy" else run

    monkeypatch.setattr(experiments, "answer_fn", wrong_copy)
    with pytest.raises(AssertionError, match="PID-shared and PID-copy disagree"):
        experiments.pid_speedups(torch.device("cpu"), Us=(1,), batches=(1,), repeats=1)


def test_the_optimal_batch_is_each_methods_own_best_per_dialogue():
    from pidutils.experiments import _optimal_batch
    rows = [{"b": 1, "U": 30, "PIE_s": 1.0, "PID-shared_s": 0.5},
            {"b": 4, "U": 30, "PIE_s": 2.0, "PID-shared_s": 0.4},  # best for both: 0.5 and 0.1 per dialogue
            {"b": 8, "U": 30, "PIE_s": 6.0, "PID-shared_s": 0.96},  # 0.75 and 0.12
            {"b": 8, "U": 1, "PIE_s": 0.1, "PID-shared_s": 0.1}]  # another U: not counted
    o = _optimal_batch(rows, 30)
    assert (o["PIE_b"], o["PID-shared_b"], o["batches"]) == (4, 4, [1, 4, 8])
    assert o["speedup"] == pytest.approx(5.0)
