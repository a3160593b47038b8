"""Speculative decoding (chapter 5): the accept/reject rule, greedy equality with the target, the
output distribution of whole sequences, and bad input."""
import copy

import pytest
import torch
from torch.overrides import TorchFunctionMode

from pidutils import distribution as dist
from pidutils import speculative as sp
from pidutils import cost, drafts, measure, t5, zoo
from pidutils.models import random_t5
from pidutils.t5 import document_memory, trim

SMALL = dict(initializer_factor=1.0, vocab_size=6, num_layers=1, d_model=32, d_ff=64, d_kv=8, num_heads=4)


def memory_of(model, source):
    mask = torch.ones_like(source)
    return t5.encoded_memory(model, source, mask)


# --- The accept/reject rule -----------------------------------------------------------------------------

def test_accept_counts_standing_guesses_and_returns_the_residual():
    p = torch.tensor([[[0.5, 0.5, 0.0], [0.2, 0.3, 0.5], [0.1, 0.1, 0.8]]])
    q = torch.tensor([[[0.25, 0.75, 0.0], [0.6, 0.2, 0.2]]])
    guesses = torch.tensor([[1, 0]])
    # guess 1: p/q = 0.5/0.75 = 2/3 stands for r < 2/3; guess 0 at step 2: p/q = 0.2/0.6 = 1/3
    n, nxt = sp.accept(p, q, guesses, torch.tensor([[0.6, 0.5]]))
    assert n.tolist() == [1]  # the first stood (0.6 < 2/3), the second fell (0.5 >= 1/3)
    assert torch.allclose(nxt, torch.tensor([[0.0, 0.1, 0.3]]) / 0.4)  # norm(max(0, p_2 - q_2))
    n, nxt = sp.accept(p, q, guesses, torch.tensor([[0.7, 0.0]]))
    assert n.tolist() == [0] and torch.allclose(nxt, torch.tensor([[0.25 / 0.25, 0.0, 0.0]]))
    n, nxt = sp.accept(p, q, guesses, torch.tensor([[0.1, 0.2]]))
    assert n.tolist() == [2] and torch.allclose(nxt, p[:, 2])  # all stood: the bonus token from p_{γ+1}


def test_a_guess_the_target_never_makes_always_falls():
    p = torch.tensor([[[1.0, 0.0], [0.5, 0.5]]])
    q = torch.tensor([[[0.0, 1.0]]])
    n, nxt = sp.accept(p, q, torch.tensor([[1]]), torch.zeros(1, 1))  # even at r = 0
    assert n.tolist() == [0] and torch.equal(nxt, torch.tensor([[1.0, 0.0]]))


def test_greedy_is_the_one_hot_case():
    logits_p, logits_q = torch.randn(4, 6, 9), torch.randn(4, 5, 9)
    p, q = (sp.warp(x, sp.Sampling()) for x in (logits_p, logits_q))
    guesses = logits_q.argmax(-1)
    guesses[:, 2] = logits_p[:, 2].argmax(-1)  # make some agree
    n, nxt = sp.accept(p, q, guesses, torch.rand(4, 5))
    agree = guesses == logits_p[:, :5].argmax(-1)
    expected = torch.cat([~agree, torch.ones(4, 1, dtype=torch.bool)], 1).int().argmax(1)
    assert torch.equal(n, expected)
    assert torch.equal(nxt.argmax(-1), logits_p[torch.arange(4), n].argmax(-1)) and torch.equal(nxt.max(-1).values,
                                                                                              torch.ones(4))
    n_greedy, after = sp.accept_greedy(logits_p.argmax(-1), guesses)  # the shortcut the greedy loop takes
    assert torch.equal(n_greedy, n) and torch.equal(after, nxt.argmax(-1))


@pytest.mark.parametrize("seed", range(5))
def test_the_rule_reproduces_p_exactly(seed):
    g = torch.Generator().manual_seed(seed)
    p = torch.rand(50, generator=g, dtype=torch.float64) ** 3
    q = torch.rand(50, generator=g, dtype=torch.float64) ** 3
    p, q = p / p.sum(), q / q.sum()
    assert torch.allclose(sp.rule_distribution(p, q), p, atol=1e-6, rtol=0)
    assert torch.equal(sp.rule_distribution(p, p), p)  # nothing can fall


def test_warpers_follow_hugging_face():
    from transformers.generation.logits_process import (TemperatureLogitsWarper, TopKLogitsWarper,
                                                        TopPLogitsWarper)
    logits = torch.randn(3, 40) * 3
    for temperature, top_k, top_p in ((1.0, 0, 1.0), (0.7, 10, 1.0), (1.3, 0, 0.8), (1.0, 5, 0.5)):
        ours = sp.warp(logits, sp.Sampling(temperature, top_k, top_p))
        hf = TemperatureLogitsWarper(temperature)(None, logits)
        hf = TopKLogitsWarper(top_k)(None, hf) if top_k else hf
        hf = TopPLogitsWarper(top_p)(None, hf) if top_p < 1 else hf
        assert torch.allclose(ours, hf.softmax(-1), atol=1e-6)


def test_the_slides_temperature_example():
    logits = torch.tensor([5.0, 2.0, -1.0], dtype=torch.float64)
    expected = {0.5: (0.99753, 0.00247, 6.1e-6), 1.0: (0.95033, 0.04731, 0.00236), 2.0: (0.78559, 0.17529, 0.03911)}
    for temperature, probs in expected.items():
        assert torch.allclose(sp.warp(logits, sp.Sampling(temperature)), torch.tensor(probs, dtype=torch.float64),
                              atol=1e-5)


def test_the_batchs_shortest_run_and_the_tokens_every_row_keeps():
    """b = 3 rows, γ = 3: every row keeps the shortest run m of standing guesses, plus one token."""
    eos, pad = 1, 0
    guesses = torch.tensor([[5, 6, 7], [5, 1, 9], [8, 8, 8]])
    after = torch.tensor([40, 41, 42])  # each row's token after its run
    n = torch.tensor([3, 2, 0])
    running = torch.zeros(3, dtype=torch.bool)
    # row 1's run holds </s> (it ends there) and does not hold the others back; row 2 has no run
    m = sp.shortest_run(n, guesses, running, eos=eos)
    assert m.dim() == 0 and int(m) == 0
    assert sp.kept_tokens(guesses, n, m, after, pad=pad).tolist() == [[5, 0, 0, 0], [5, 0, 0, 0], [42, 0, 0, 0]]
    # with row 2 done, the shortest run is row 0's: all three stood, and its bonus token follows
    done = torch.tensor([False, False, True])
    m = sp.shortest_run(n, guesses, done, eos=eos)
    assert int(m) == 3
    assert sp.kept_tokens(guesses, n, m, after, pad=pad).tolist()[0] == [5, 6, 7, 40]
    # a row whose run is longer than m keeps its guess m+1, which stood; a shorter one its correction
    m = torch.tensor(1)
    assert sp.kept_tokens(guesses, torch.tensor([3, 1, 2]), m, after, pad=pad).tolist() == \
        [[5, 6, 0, 0], [5, 41, 0, 0], [8, 8, 0, 0]]


# --- Greedy speculative decoding is the target's greedy decoding ----------------------------------------

def perturbed(model, scale, seed=5):
    """A copy of ``model`` with noise on its decoder: a draft that agrees with it part of the time."""
    draft = copy.deepcopy(model)
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for weight in draft.decoder.parameters():
            weight.add_(torch.randn(weight.shape, generator=generator) * weight.std() * scale)
    return draft


@pytest.fixture(scope="module")
def random_pair():
    target = random_t5("t5-tiny", seed=1)
    draft = perturbed(target, 0.015)
    source = torch.randint(2, 1024, (3, 11), generator=torch.Generator().manual_seed(0))
    return target, draft, memory_of(target, source), memory_of(draft, source), source


@pytest.mark.parametrize("gamma", [1, 3, 8])
def test_greedy_equals_the_target_on_random_models(random_pair, gamma):
    target, draft, mt, md, source = random_pair
    expected = sp.autoregressive(target, mt, max_new_tokens=20, pad=0)
    ours, stats = sp.speculative_decode(target, draft, mt, md, gamma=gamma, max_new_tokens=20, pad=0)
    assert torch.equal(ours, expected)  # batched, b = 3
    assert 0 < stats.alpha < 1
    for row in range(3):
        one = source[row:row + 1]
        ours, _ = sp.speculative_decode(target, draft, memory_of(target, one), memory_of(draft, one), gamma=gamma,
                                        max_new_tokens=20, pad=0)
        assert torch.equal(ours, trim(expected[row:row + 1], 0))


def test_a_draft_identical_to_the_target_has_every_guess_stand(random_pair):
    target, _, mt, _, _ = random_pair
    ours, stats = sp.speculative_decode(target, target, mt, mt, gamma=4, max_new_tokens=20, pad=0)
    assert torch.equal(ours, sp.autoregressive(target, mt, max_new_tokens=20, pad=0))
    assert stats.alpha == 1.0 and all(r.standing == [4, 4, 4] for r in stats.rounds[:-1])


HOST_READS = {"tolist", "item", "__bool__", "__int__", "__float__", "__index__", "nonzero"}


class HostReads(TorchFunctionMode):
    """Counts the calls that read a tensor back to the host: on a GPU, each one waits for the device."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        name = getattr(func, "__name__", "")
        mask = name == "__getitem__" and isinstance(args[1], torch.Tensor) and args[1].dtype == torch.bool
        self.count += name in HOST_READS or mask
        return func(*args, **(kwargs or {}))


def test_the_statistics_add_no_host_reads_to_the_rounds(random_pair):
    target, draft, mt, md, _ = random_pair
    with torch.inference_mode(), HostReads() as reads:
        tokens, stats = sp.speculative_decode(target, draft, mt, md, gamma=4, max_new_tokens=20, pad=0)
    rounds = stats.rounds  # read back now, after the run
    # the loop's own reads only: one per round (the shortest run m and "is every row done?" together;
    # none per draft step), and trimming the padding at the end
    assert reads.count <= len(rounds) + 2
    assert len(rounds) > 1 and tokens.shape[1] > 1 and 0 < stats.alpha < 1


@pytest.mark.parametrize("max_new_tokens", [1, 2, 6, 7])
def test_the_length_limit_is_kept_exactly(random_pair, max_new_tokens):
    target, draft, mt, md, _ = random_pair
    ours, _ = sp.speculative_decode(target, draft, mt, md, gamma=5, max_new_tokens=max_new_tokens, pad=0)
    assert ours.shape[1] <= max_new_tokens
    assert torch.equal(ours, sp.autoregressive(target, mt, max_new_tokens=max_new_tokens, pad=0))


@pytest.fixture(scope="module")
def bed():
    """Chapter 5's testbed: the shipped target and trained draft, and the first 8 test dialogues."""
    return drafts.load_speculative(device="cpu", dialogues=8)


@pytest.fixture(scope="module")
def shipped(bed):
    return bed["target"], bed["draft"], bed.tokenizer, bed.documents


@pytest.mark.parametrize("gamma", [2, 5, 8])
def test_greedy_equals_the_target_on_the_shipped_models(shipped, gamma):
    target, draft, tokenizer, documents = shipped
    expected = sp.autoregressive(target, document_memory(target, tokenizer, documents), pad=tokenizer.pad_token_id)
    batched, stats = sp.speculative_generate_ids(target, draft, tokenizer, documents, gamma=gamma)
    assert torch.equal(batched, expected)
    for i, document in enumerate(documents[:3]):
        one, _ = sp.speculative_generate_ids(target, draft, tokenizer, [document], gamma=gamma)
        assert torch.equal(one, trim(expected[i:i + 1], tokenizer.pad_token_id))
    assert stats.alpha > 0.5


def test_end_of_sequence_inside_a_standing_run(shipped):
    target, _, tokenizer, documents = shipped
    eos, pad = target.config.eos_token_id, tokenizer.pad_token_id
    tokens, stats = sp.speculative_generate_ids(target, target, tokenizer, documents[:3], gamma=8)
    inside = [(r, i) for r in stats.rounds for i, (guesses, n) in enumerate(zip(r.guesses, r.standing))
              if eos in guesses[:n] and r.kept[i]]
    assert inside, "no row ended inside a run of standing guesses"
    for r, i in inside:  # the row keeps its guesses up to </s>, and nothing after
        assert r.kept[i] == r.guesses[i][:r.guesses[i].index(eos) + 1]
    assert torch.equal(tokens, sp.autoregressive(target, document_memory(target, tokenizer, documents[:3]), pad=pad))
    for row in tokens.tolist():  # everything after </s> is padding
        assert set(row[row.index(eos) + 1:]) <= {pad}


def test_the_draft_guesses_gamma_tokens_a_round_and_nothing_after_an_end_is_kept(shipped):
    """The draft no longer stops at its own </s> (that would read a number back at every guess): it
    makes γ guesses every round, and the rounds keep nothing a row makes after its </s>. Every row
    of a round keeps the batch's shortest run plus one token, unless its output ends inside it."""
    target, draft, tokenizer, documents = shipped
    eos, gamma = target.config.eos_token_id, 8
    guessed_past_an_end = 0
    for rows in [[d] for d in documents[:3]] + [documents[:4]]:
        tokens, stats = sp.speculative_generate_ids(target, draft, tokenizer, rows, gamma=gamma)
        ended = [False] * len(rows)
        for r in stats.rounds:
            assert all(len(g) == gamma for g in r.guesses)  # far from the length limit: γ every round
            width = max(len(k) for k in r.kept)
            assert width >= 1, "a round kept nothing"
            for i, (guesses, k) in enumerate(zip(r.guesses, r.kept)):
                if ended[i]:
                    assert k == []  # a row that has ended keeps nothing more
                    continue
                assert k[:-1] == guesses[:len(k) - 1] and eos not in k[:-1]  # standing guesses, then one token
                assert len(k) == width or k[-1] == eos  # the shared run, or the row ends inside it
                ended[i] = k[-1] == eos
                guessed_past_an_end += eos in guesses[:-1]
        assert all(ended)
        for i, row in enumerate(tokens.tolist()):  # the output is what the rounds kept, up to its </s>
            assert row[:row.index(eos) + 1] == [t for r in stats.rounds for t in r.kept[i]]
        assert torch.equal(tokens, sp.autoregressive(target, document_memory(target, tokenizer, rows),
                                                     pad=tokenizer.pad_token_id))
    assert guessed_past_an_end  # the draft went on guessing after its </s>, and none of it was kept


@pytest.mark.parametrize("gamma", [1, 5])
def test_greedy_equals_hugging_face_assisted_generation(bed, gamma):
    target, draft, tokenizer = bed["target"], bed["draft"], bed.tokenizer
    assisted = measure.hf_assisted_way(gamma=gamma)
    for document in bed.documents[:3]:
        hf = assisted.whole(bed, [document])
        ours, _ = sp.speculative_generate_ids(target, draft, tokenizer, [document], gamma=gamma)
        assert torch.equal(ours, hf[:, 1:])
    assert draft.generation_config.num_assistant_tokens is None  # its settings are restored


# --- Sampling: the output has the target's distribution -------------------------------------------------

@pytest.fixture(scope="module")
def small_pair():
    """Two random T5s with a six-token vocabulary: 36 possible first two tokens."""
    target, draft = random_t5("t5-tiny", seed=1, **SMALL), random_t5("t5-tiny", seed=2, **SMALL)
    source = torch.randint(2, 6, (1, 12), generator=torch.Generator().manual_seed(0))
    return target, draft, memory_of(target, source), memory_of(draft, source)


def test_sampling_one_row_at_a_time_gives_the_target_distribution(small_pair):
    """20,000 whole runs of two tokens at b = 1 (longer runs, in batches: tests/test_distribution.py);
    the test catches a 2% error at this sample size (shown by the shifted sampler)."""
    target, draft, mt, md = small_pair
    sampling = sp.Sampling(temperature=1.5)
    exact = dist.sequence_distribution(target, mt, sampling, 2)
    generator = torch.Generator().manual_seed(0)
    runs = [sp.speculative_decode(target, draft, mt, md, gamma=3, sampling=sampling, max_new_tokens=2, pad=0,
                                  generator=generator)[0] for _ in range(20_000)]
    runs = torch.cat([torch.nn.functional.pad(r, (0, 2 - r.shape[1])) for r in runs])
    observed = torch.bincount(dist.sequence_index(runs, 6, 2, 0), minlength=36)
    assert dist.chi_square(observed, exact)[2] > 0.01
    # 2% of the mass moved between the two likeliest outcomes is caught at the same sample size
    a, b = exact.topk(2).indices
    shifted = exact.clone()
    shifted[a] -= 0.02
    shifted[b] += 0.02
    wrong = torch.multinomial(shifted, 20_000, replacement=True, generator=generator)
    assert dist.chi_square(torch.bincount(wrong, minlength=36), exact)[2] < 0.01


def test_sampling_repeats_with_its_seed(shipped):
    target, draft, tokenizer, documents = shipped
    runs = [sp.speculative_generate_ids(target, draft, tokenizer, documents[:2], gamma=4, sampling=sp.Sampling(1.0),
                                        seed=7)[0] for _ in range(2)]
    assert torch.equal(*runs)


# --- Bad input --------------------------------------------------------------------------------------------

def test_bad_input_is_a_value_error_naming_the_parameter(shipped, random_pair):
    target, draft, tokenizer, documents = shipped
    cases = [
        (dict(gamma=0), "gamma must be in"),
        (dict(max_new_tokens=0), "max_new_tokens must be in"),
        (dict(documents=[]), "documents"),
        (dict(documents=["word " * 5000]), "at most"),
        (dict(draft=random_pair[1]), "same vocabulary|share one vocabulary"),
        (dict(draft=torch.nn.Linear(2, 2)), "model must be a T5 encoder-decoder"),
        (dict(target=torch.nn.Linear(2, 2)), "model must be a T5 encoder-decoder"),
        (dict(sampling="greedy"), "sampling must be"),
    ]
    for change, message in cases:
        args = dict(target=target, draft=draft, tokenizer=tokenizer, documents=documents[:1], gamma=3) | change
        with pytest.raises(ValueError, match=message):
            sp.speculative_generate_ids(**args)
    for kwargs, message in ((dict(temperature=-0.5), "temperature must be in"), (dict(top_p=0.0), "top_p must be in"),
                            (dict(top_p=1.5), "top_p must be in"), (dict(top_k=-1), "top_k must be in")):
        with pytest.raises(ValueError, match=message):
            sp.Sampling(**kwargs)
    other = zoo.load("pid-t5-tiny")[1]
    other.add_tokens(["zzz-new-token"])
    with pytest.raises(ValueError, match="tokenizer"):
        sp.speculative_generate_ids(target, draft, tokenizer, documents[:1], draft_tokenizer=other)


def test_the_speculative_experiment_reports_every_figure(capsys):
    """Small arguments, every figure re-derived: each speed-up is the ratio of the reported times, the
    predictions the formulas at the reported α and c, α and the tokens per round those of the same
    runs, the JGA :func:`pidutils.measure.jga`'s for the same ways, and at T = 0 speculative decoding
    answers what the target alone answers."""
    from pidutils.experiments import speculative_speedups
    n = 2
    result = speculative_speedups(torch.device("cpu"), dialogues=n, repeats=1, gammas=(2,), temperatures=(0.0,),
                                  ngram_dialogues=20)
    assert set(result["drafts"]) == set(drafts.DRAFTS) and result["verify_cost"][2] > 0
    bed = drafts.load_speculative(device="cpu", dialogues=n)
    for name, draft in result["drafts"].items():
        other = drafts.with_draft(bed, name)
        costs = draft["costs"]
        assert costs["c"] == pytest.approx(costs["draft_step_s"] / costs["target_step_s"], rel=1e-12)
        assert 0 < costs["c"] < 1 and costs["target_encoder_s"] > 0 and costs["draft_encoder_s"] > 0
        alone = {role: measure.sequential_way(role) for role in ("target", "draft")}
        assert draft["jga"] == pytest.approx(measure.jga(other, alone))
        assert all(0 <= v <= 1 for v in draft["jga"].values())
        rows = draft["by_temperature"][0.0]["by_gamma"]
        assert [r["gamma"] for r in rows] == [2]
        row, c = rows[0], costs["c"]
        assert (row["alpha"], row["tokens_per_round"]) == pytest.approx(drafts.alpha(other, gamma=2))  # greedy: exact
        assert 0 <= row["alpha"] <= 1 and 1 <= row["tokens_per_round"] <= 3
        assert row["predicted"] == pytest.approx(cost.speculative_speedup(row["alpha"], 2, c))
        assert row["refined"] == pytest.approx(row["tokens_per_round"] / (2 * c + result["verify_cost"][2]))
        assert row["end_to_end"] == pytest.approx(row["target_s"] / row["speculative_s"], rel=1e-12)
        assert row["decoding_phase"] == pytest.approx(row["target_decoding_s"] / row["speculative_decoding_s"],
                                                      rel=1e-12)
        assert row["vs_hf_assisted"] == pytest.approx(row["hf_assisted_s"] / row["speculative_s"], rel=1e-12)
        assert row["hf_assisted_vs_target"] == pytest.approx(row["target_s"] / row["hf_assisted_s"], rel=1e-12)
        assert row["ms_per_dialogue"] == pytest.approx(row["speculative_s"] / n * 1e3)
        encoders = row["speculative_s"] - row["speculative_decoding_s"]
        assert row["predicted_end_to_end"] == pytest.approx(
            row["target_s"] / (encoders + row["target_decoding_s"] / row["predicted"]))
        assert row["of_predicted"] == pytest.approx(row["end_to_end"] / row["predicted_end_to_end"])
        assert row["decoding_of_predicted"] == pytest.approx(row["decoding_phase"] / row["predicted"])
        assert row["decoding_of_refined"] == pytest.approx(row["decoding_phase"] / row["refined"])
        assert all(row[k] > 0 for k in ("end_to_end", "decoding_phase", "vs_hf_assisted", "predicted_end_to_end"))
        summary = draft["by_temperature"][0.0]
        assert summary["best_gamma"] == max(rows, key=lambda r: r["end_to_end"])["gamma"]
        assert summary["target_ms_per_dialogue"] == pytest.approx(row["target_s"] / n * 1e3)
        # greedy speculative decoding answers exactly what the target alone answers (the experiment checks it too)
        assert measure.answers(other, measure.speculative_way(gamma=2)) == measure.answers(other, alone["target"])
    table = result["alpha_table"][0.0]
    assert set(table) == {"unigram", "bigram", *drafts.DRAFTS} and all(0 <= a <= 1 for a in table.values())
    assert table == pytest.approx(drafts.alpha_table(bed, ngram_dialogues=20, drafts=drafts.DRAFTS[1:]))
    assert table["unigram"] < table["bigram"] < table["seq-t5-tiny"]  # the trained draft agrees most
    assert capsys.readouterr().out.count("best γ = 2") == 2


def test_the_speculative_experiment_refuses_greedy_answers_that_differ(bed):
    """At T = 0 a way whose answers are not the target's own stops the experiment."""
    from pidutils.experiments import check_same_answers
    two = bed.select(0, 2)
    ways = measure.speculative_ways([2], hugging_face=False)
    check_same_answers(two, ways)  # the real ways agree
    short = measure.Way(("target",), lambda bed, memory: sp.autoregressive(bed["target"], memory, pad=bed.pad,
                                                                         max_new_tokens=5), measure.token_states)
    with pytest.raises(AssertionError, match="cut short and the way 'target' disagree"):
        check_same_answers(two, ways | {"cut short": short})
