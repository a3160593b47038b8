"""Pipelined decoding (chapter 4): the layout, Algorithm 1's schedule, and the cached decoder
against the uncached reference and against teacher forcing."""
import random

import pytest
import torch
from transformers import T5EncoderModel

from pidutils import measure, sequential, t5
from pidutils import pipelined as pl
from pidutils.models import random_t5

BOS, EOS, PAD = 0, 1, 0
A, B, C, D, E = 10, 11, 12, 13, 14


def close(a, b, tol=1e-5):
    """Equal within ``tol`` of the largest logit (random T5s have logits in the hundreds)."""
    return bool((a - b).abs().max() <= tol * b.abs().max())


def figure2(delta_t):
    """The paper's Figure 2, "A B C <sep> D E", driven by a scripted model."""
    step = pl.scripted_step([[[A, B, C], [D, E]]], delta_t=delta_t, eos=EOS, vocab_size=20)
    return pl.algorithm1(step, b=1, delta_t=delta_t, time_max=50, sub_max=20, bos=BOS, eos=EOS)[0]


def tokens_per_step(schedule, script):
    """Content tokens (not </s>) made at each step."""
    made, counts = [0] * len(script), []
    for subs in schedule.made:
        n = 0
        for i in subs:
            n += made[i] < len(script[i])
            made[i] += 1
        counts.append(n)
    return counts


def test_figure2_schedule_at_delta_t_1():
    schedule = figure2(1)
    assert schedule.subsequences == [[A, B, C], [D, E], []]
    assert schedule.steps == 4
    assert tokens_per_step(schedule, [[A, B, C], [D, E], []]) == [1, 2, 2, 0]
    # step 3 opens the third subsequence, which comes out empty; step 4 ends the first two
    assert schedule.made == [[0], [0, 1], [0, 1, 2], [0, 1]]


@pytest.mark.parametrize("delta_t, made", [
    (2, [[0], [0], [0, 1], [0, 1], [1, 2]]),
    (3, [[0], [0], [0], [0, 1], [1], [1], [2]]),
])
def test_figure2_schedule_at_larger_delta_t(delta_t, made):
    schedule = figure2(delta_t)
    assert schedule.made == made
    assert schedule.subsequences[:2] == [[A, B, C], [D, E]]


def test_delta_t_past_a_subsequence_length_leaves_idle_steps():
    # "A B C </s>" ends at step 4, the second subsequence opens at step 6: the pipeline drains
    schedule = figure2(5)
    assert schedule.subsequences == [[A, B, C], [D, E], []]
    assert schedule.made == [[0], [0], [0], [0], [], [1], [1], [1], [], [], [2]]


def test_token_j_of_subsequence_i_is_made_at_step_i_delta_t_plus_j():
    for delta_t in (1, 2, 3):
        schedule = figure2(delta_t)
        for i, tokens in enumerate(schedule.subsequences):
            for j in range(1, len(tokens) + 1):  # 1-based j, 0-based i: step i*Δt + j
                step = i * delta_t + j
                assert i in schedule.made[step - 1]


def reference_schedule(script, *, delta_t, time_max, sub_max):
    """Algorithm 1 for one scripted document, in plain Python, by its rules alone: a slow and
    obviously correct reference for the schedule kept in tensors (pipelined.Progress)."""
    subsequences, ended, made, closed, started = [], [], [], False, 0
    for t in range(1, time_max + 1):
        if (t - 1) % delta_t == 0 and started < sub_max:
            if not closed:
                subsequences.append([])
                ended.append(False)
            started += 1
            closed = closed or started == sub_max
        growing = [i for i in range(len(subsequences)) if not ended[i]]
        if closed and not growing:
            break
        made.append(growing)
        for i in growing:
            emitted = script[i] if i < len(script) else []
            j = len(subsequences[i])
            if j < len(emitted):
                subsequences[i].append(emitted[j])
            else:
                ended[i] = True
                closed = closed or j == 0  # an empty subsequence closes the document
    return subsequences, made, ended, closed


@pytest.mark.parametrize("seed", range(12))
def test_the_tensor_schedule_equals_a_plain_python_algorithm1(seed):
    """Random scripts for b = 3 documents: empty subsequences (which close a document), long and
    short ones that leave holes in the step's window, <bos>'s id as a content token, Δt past a
    subsequence's length (idle steps), and the time_max and sub_max edges."""
    rng = random.Random(seed)
    delta_t, time_max, sub_max = rng.choice([1, 2, 3]), rng.choice([4, 9, 30]), rng.choice([1, 2, 4, 20])
    script = [[[rng.choice([0, A, B, C, D, E]) for _ in range(rng.choice([0, 1, 1, 2, 4, 7]))]
               for _ in range(rng.randint(1, 6))] for _ in range(3)]
    step = pl.scripted_step(script, delta_t=delta_t, eos=EOS, vocab_size=20)
    ours = pl.algorithm1(step, b=3, delta_t=delta_t, time_max=time_max, sub_max=sub_max, bos=BOS, eos=EOS)
    for schedule, doc in zip(ours, script):
        expected = reference_schedule(doc, delta_t=delta_t, time_max=time_max, sub_max=sub_max)
        assert (schedule.subsequences, schedule.made, schedule.ended, schedule.closed) == expected


def test_the_pipelined_decoder_reads_the_host_once_a_step(setup, monkeypatch):
    """Algorithm 1 with the KV cache reads back from the device once a time-step, plus once at the
    end for the schedules: every ``tolist``, ``item``, ``bool`` or ``int`` of a tensor is counted."""
    model, tokenizer, documents = setup
    memory = t5.document_memory(model, tokenizer, documents)
    reads = []
    for name in ("tolist", "item", "__bool__", "__int__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, (lambda f, n: lambda self, *a: (reads.append(n), f(self, *a))[1])(
            getattr(torch.Tensor, name), name))
    schedules = pl.pipelined_decode(model, memory, time_max=12, sub_max=5)
    monkeypatch.undo()
    steps = max(s.steps for s in schedules)
    assert steps > 5  # a random model runs for several steps
    assert len(reads) <= steps + 2, reads  # each step's poll, the last poll that ends the loop, the read-back


def test_mask_and_positions_of_figure3():
    coords = pl.coordinates([4, 3, 1], delta_t=1)  # "<bos> A B C", "<bos> D E", "<bos>"
    assert coords == [(0, 0), (0, 1), (1, 1), (0, 2), (1, 2), (2, 2), (0, 3), (1, 3)]
    sub = torch.tensor([[c[0] for c in coords]])
    time = torch.tensor([[c[1] for c in coords]])
    valid = torch.ones_like(sub, dtype=torch.bool)
    mask = pl.attention_mask(sub, time, sub, time, valid)[0]
    # "D" (1, 2) sees <bos>, A, B of the first subsequence and <bos>, D of its own; not "C" (later) nor sub 2
    assert mask[4].tolist() == [True, True, True, True, True, False, False, False]
    distance = pl.manhattan(sub, time, sub, time)[0]
    assert distance[4].tolist() == [3, 2, 1, 1, 0, 1, 2, 1]


def test_training_layout_labels_each_token_with_the_next_of_its_subsequence():
    layout, labels = pl.training_layout([[[A, B, C], [D, E]]], [1], bos=BOS, eos=EOS, pad=PAD)
    assert layout.ids[0].tolist() == [BOS, A, BOS, B, D, BOS, C, E]
    assert labels[0].tolist() == [A, B, D, C, E, EOS, EOS, EOS]
    assert layout.sub[0].tolist() == [0, 0, 1, 0, 1, 2, 0, 1]
    assert layout.time[0].tolist() == [0, 1, 1, 2, 2, 2, 3, 3]


@pytest.fixture(scope="module")
def setup(tokenizer):
    model = random_t5("t5-tiny", seed=2)
    model.resize_token_embeddings(len(tokenizer))
    documents = ["user : i need a hotel in the north , cheap please .",
                 "user : a taxi at 17:00 to the station , and a table for 2 ."]
    return model.eval(), tokenizer, documents


def decode(model, tokenizer, documents, step_kind, delta_t=1, time_max=12, sub_max=5):
    enc = tokenizer(documents, padding=True, return_tensors="pt")
    memory = t5.encoded_memory(model, enc["input_ids"], enc["attention_mask"])
    logits = []
    step = pl.cached_step(model, memory, rows=len(documents), capacity=time_max * sub_max) if step_kind == "cached" \
        else pl.uncached_step(model, memory)
    with torch.inference_mode():
        schedules = pl.algorithm1(pl.recording(step, logits), b=len(documents), delta_t=delta_t, time_max=time_max,
                                  sub_max=sub_max, bos=BOS, eos=EOS)
    return schedules, logits


@pytest.mark.parametrize("delta_t", [1, 2, 3])
def test_cached_decoding_equals_the_uncached_reference(setup, delta_t):
    model, tokenizer, documents = setup
    cached, cached_logits = decode(model, tokenizer, documents, "cached", delta_t)
    reference, reference_logits = decode(model, tokenizer, documents, "uncached", delta_t)
    assert [s.subsequences for s in cached] == [s.subsequences for s in reference]
    assert [s.made for s in cached] == [s.made for s in reference]
    assert sum(len(s.made) for s in cached) > 5  # a random model runs for several steps
    for ours, theirs in zip(cached_logits, reference_logits):
        assert close(ours, theirs)


def test_each_document_of_a_batch_decodes_as_alone(setup):
    model, tokenizer, documents = setup
    batch, _ = decode(model, tokenizer, documents, "cached")
    for document, schedule in zip(documents, batch):
        alone, _ = decode(model, tokenizer, [document], "cached")
        assert alone[0].subsequences == schedule.subsequences and alone[0].made == schedule.made


@pytest.mark.parametrize("delta_t", [1, 3])
def test_forced_decoding_gives_the_teacher_forced_logits(setup, delta_t):
    model, tokenizer, documents = setup
    targets = [[[A, B, C], [D, E]], [[E], [D, C, B, A], [B]]]
    enc = tokenizer(documents, padding=True, return_tensors="pt")
    memory = t5.encoded_memory(model, enc["input_ids"], enc["attention_mask"])
    recorded, forced = [], pl.scripted_step(targets, delta_t=delta_t, eos=EOS, vocab_size=len(tokenizer))
    real = pl.cached_step(model, memory, rows=2, capacity=100)
    with torch.inference_mode():
        pl.algorithm1(lambda new: (recorded.append((new, real(new))), forced(new))[1], b=2, delta_t=delta_t,
                      time_max=50, sub_max=20, bos=BOS, eos=EOS, device=model.device)
        layout, _ = pl.training_layout(targets, [delta_t, delta_t], bos=BOS, eos=EOS, pad=PAD)
        teacher = pl.teacher_forced_logits(model, memory, layout)
    checked = 0
    for new, logits in recorded:
        for d, k in new.valid.nonzero().tolist():
            at = ((layout.sub[d] == new.sub[d, k]) & (layout.time[d] == new.time[d, k]) & layout.valid[d]).nonzero()
            assert at.numel() == 1
            assert close(logits[d, k], teacher[d, int(at)])
            checked += 1
    assert checked == int(layout.valid.sum())


def test_loss_trains_the_decoder_and_the_encoder(setup):
    model, tokenizer, _ = setup
    from pidutils import data
    split = data.make_split("train", train=20)
    batch = pl.pipelined_batches(split, tokenizer, model, batch_size=2)(__import__("random").Random(0))
    model.train()
    loss = pl.pipelined_loss(model, batch)
    loss.backward()
    assert loss.item() > 0
    assert model.get_encoder().block[0].layer[0].SelfAttention.q.weight.grad.abs().sum() > 0
    model.zero_grad()
    model.eval()


@pytest.mark.parametrize("kwargs, match", [
    ({"delta_t": 0}, "delta_t must be in"),
    ({"time_max": 0}, "time_max must be in"),
    ({"sub_max": 0}, "sub_max must be in"),
    ({"documents": []}, "at least one document"),
    ({"documents": ["word " * 600]}, "at most 512 tokens"),
])
def test_bad_input_is_a_value_error(setup, kwargs, match):
    model, tokenizer, documents = setup
    kwargs = {"documents": documents, **kwargs}
    with pytest.raises(ValueError, match=match):
        pl.pipelined_generate(model, tokenizer, **kwargs)


def test_an_encoder_only_model_is_refused(setup):
    _, tokenizer, documents = setup
    with pytest.raises(ValueError, match="model must be a T5 encoder-decoder"):
        pl.pipelined_generate(T5EncoderModel(random_t5("t5-tiny").config), tokenizer, documents)
    with pytest.raises(ValueError, match="model must be a T5 encoder-decoder"):
        sequential.sequential_generate(T5EncoderModel(random_t5("t5-tiny").config), tokenizer, documents)


def test_the_pipelined_experiment_reports_every_figure(capsys):
    """Small arguments, but every figure re-derived: each speed-up is the ratio of the reported times,
    each throughput the dialogues over the seconds, the steps the decoders' own, the JGA the one
    :func:`pidutils.measure.jga` gives for the same ways on the same dialogues."""
    from pidutils.experiments import pipelined_speedups
    n = 3
    result = pipelined_speedups(torch.device("cpu"), dialogues=n, batch=2, repeats=1, quality_dialogues=n)
    rows = result["throughput"]
    assert sorted((r["b"], r["phase"]) for r in rows) == [(1, "decoding phase"), (1, "end to end"),
                                                          (2, "decoding phase"), (2, "end to end")]
    for row in rows:
        ways = ["sequential", "pipelined"] + (["HF_generate"] if row["phase"] == "end to end" else [])
        assert all(row[f"{w}_s"] > 0 for w in ways)
        assert ("HF_generate_s" in row) == (row["phase"] == "end to end")  # generate has no decoding phase
        assert row["speedup"] == pytest.approx(row["sequential_s"] / row["pipelined_s"], rel=1e-12)
        for w in ways:
            assert row[f"{w}_per_s"] == pytest.approx(n / row[f"{w}_s"], rel=1e-12)
        if "HF_generate_s" in row:
            assert row["speedup_vs_hf"] == pytest.approx(row["HF_generate_s"] / row["pipelined_s"], rel=1e-12)
    bed = measure.load_testbed(measure.FULL_STATE, device="cpu", dialogues=n)
    ways = measure.full_state_ways(hugging_face=False)
    seq_steps, pipe_steps = (measure.steps_taken(bed, ways[w]) for w in ("sequential", "pipelined"))
    steps = result["steps"]
    assert (steps["sequential"], steps["pipelined"]) == (pytest.approx(sum(seq_steps) / n),
                                                         pytest.approx(sum(pipe_steps) / n))
    assert steps["ratio"] == pytest.approx(steps["sequential"] / steps["pipelined"]) and steps["ratio"] > 1
    if "encoder_bound" in result:  # Amdahl: the encoder's share of a sequential request at b = 1
        phase = next(r["sequential_s"] for r in rows if r["b"] == 1 and r["phase"] == "decoding phase")
        bound = result["encoder_bound"]
        encoder = bound["encoder_s"]
        assert encoder > 0 and bound["encoder_share"] == pytest.approx(encoder / (encoder + phase))
        assert bound["end_to_end_bound"] == pytest.approx((encoder + phase) / (encoder + phase / steps["ratio"]))
        assert 1 < bound["end_to_end_bound"] < steps["ratio"]
    assert set(result["peak_bytes"]) == {"sequential", "pipelined"} and min(result["peak_bytes"].values()) > 0
    assert [r["delta_t"] for r in result["delta_t"]] == list(pl.DELTA_TS)
    for row in result["delta_t"]:
        assert row["examples_per_s"] == pytest.approx(n / row["seconds"], rel=1e-12)
        taken = measure.steps_taken(bed, measure.pipelined_way(delta_t=row["delta_t"]))
        assert row["steps"] == pytest.approx(sum(taken) / n)
    quality_ways = {"sequential": measure.sequential_way()} | {
        f"pipelined delta_t={d}": measure.pipelined_way(delta_t=d) for d in pl.DELTA_TS}
    right = measure.outcomes(bed, quality_ways)
    quality = result["quality"]
    assert quality["dialogues"] == n
    for name, outcomes in right.items():
        assert 0 <= quality[name]["jga"] <= 1
        assert quality[name]["jga"] == pytest.approx(sum(outcomes) / n)
        assert quality[name]["stderr"] == pytest.approx(measure.standard_error(outcomes))
        if name != "sequential":
            only_seq, only_pipe, p = measure.paired(right["sequential"], outcomes)
            counts = quality[name]["only_sequential_right"], quality[name]["only_pipelined_right"]
            assert counts == (only_seq, only_pipe)
            assert quality[name]["mcnemar_p"] == pytest.approx(p)
    assert result["jga"] == {"sequential": quality["sequential"]["jga"],
                             "pipelined": quality["pipelined delta_t=1"]["jga"]}
    assert result["jga"] == pytest.approx(measure.jga(bed, measure.full_state_ways(hugging_face=False)))
    assert set(result["by_subsequences"]) == {len(s) for s in bed.subsequences}
    assert all(v > 0 for v in result["by_subsequences"].values())
    assert "Figure 4" in capsys.readouterr().out


def test_predicted_latency_counts_the_schedule_of_the_gold_state():
    from pidutils import cost
    bed = measure.load_testbed(measure.FULL_STATE, device="cpu", dialogues=2)
    lengths = measure.gold_lengths(bed, 0)
    assert len(lengths) == len(bed.subsequences[0])
    assert lengths == [len(bed.tokenizer(s, add_special_tokens=False)["input_ids"]) for s in bed.subsequences[0]]
    assert measure.predicted_latency(bed, 0, delta_t=2, encoder_s=0.01, step_s=0.001) == \
        pytest.approx(0.01 + cost.pipelined_steps(lengths, 2) * 0.001)


def test_a_decoding_steps_bias_is_the_general_one():
    from pidutils.t5 import bias_table
    table = bias_table(random_t5("t5-tiny", seed=3))
    generator = torch.Generator().manual_seed(0)
    for time in (0, 3, 40, 300):  # past the last bucket's distance too
        sub_k = torch.randint(0, 12, (3, 50), generator=generator)
        time_k = torch.randint(0, time + 1, (3, 50), generator=generator)
        valid_k = torch.rand(3, 50, generator=generator) > 0.2
        sub_q = torch.randint(0, 12, (3, 7), generator=generator)
        time_q = torch.full_like(sub_q, time)
        padded = sub_k.masked_fill(~valid_k, pl.PAD_SUB)  # as decoding marks padding
        assert torch.equal(pl.step_bias(table, sub_q, sub_q + time, padded, padded + time_k),
                           pl.self_bias(table, sub_q, time_q, sub_k, time_k, valid_k))


def test_paired_counts_the_dialogues_only_one_decoder_gets_right_and_tests_them_exactly():
    from pidutils.measure import paired, standard_error
    assert paired([True, False], [False, False]) == (1, 0, 1.0)
    assert paired([True] * 6, [False] * 6) == (6, 0, pytest.approx(2 / 2 ** 6))  # 6 to 0: p = 2 · 0.5^6
    assert paired([True, True, False], [True, False, True])[:2] == (1, 1)
    assert standard_error([True, False, True, False]) == pytest.approx(0.25)
    with pytest.raises(ValueError):
        paired([True], [True, False])
