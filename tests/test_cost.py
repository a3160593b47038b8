"""The cost formulas against values worked by hand (PID paper Table 1, Appendix A; the roofline)."""
import math

import pytest

from pidutils import cost

# A small shape worked by hand: U=2 prompts, b=1 document, n_s=10, n_t=3, d=4, n_p=2.
SHAPE = dict(U=2, b=1, n_s=10, n_t=3, d=4, n_p=2)


def test_encoder_self_attention_by_hand():
    # PIE: rows = b*U = 2, n = n_s + n_p = 12 -> memory 2*12*4 + 16 = 112, ops 2*12*16 = 384
    assert cost.encoder_self_attention("pie", **SHAPE) == cost.Cost(memory=112, ops=384)
    # PID: rows = 1, n = 10 -> memory 40 + 16 = 56, ops 10*16 = 160
    assert cost.encoder_self_attention("pid", **SHAPE) == cost.Cost(memory=56, ops=160)


def test_decoder_self_attention_by_hand():
    # PIE: rows 2, cache n_t = 3: per step 2*4 + 2*3*4 + 16 = 48, times 3 steps = 144; ops 2*3*16 = 96
    assert cost.decoder_self_attention("pie", **SHAPE) == cost.Cost(memory=144, ops=96)
    # PID: cache n_t + n_p = 5: per step 8 + 40 + 16 = 64, times 3 = 192; ops 96
    assert cost.decoder_self_attention("pid", **SHAPE) == cost.Cost(memory=192, ops=96)


def test_cross_attention_by_hand():
    # PIE: K/V per step b*U*(n_s+n_p)*d = 96: per step 8 + 96 + 16 = 120, times 3 = 360; ops 96
    assert cost.cross_attention("pie", **SHAPE) == cost.Cost(memory=360, ops=96)
    # PID: shared K/V b*n_s*d = 40: per step 8 + 40 + 16 = 64, times 3 = 192; ops 96
    assert cost.cross_attention("pid", **SHAPE) == cost.Cost(memory=192, ops=96)


def test_cross_attention_inverse_intensity_is_papers_leading_terms():
    # memory/ops = 1/d + K/V/(b U d^2) + 1/(bU): PIE (n_s+n_p)/d + ..., PID n_s/(U d) + ...
    U, b, n_s, n_t, d = 30, 1, 289, 56, 768
    pie = cost.cross_attention("pie", U, b, n_s, n_t, d)
    pid = cost.cross_attention("pid", U, b, n_s, n_t, d)
    assert pie.inverse_intensity == pytest.approx(1 / d + n_s / d + 1 / (b * U))
    assert pid.inverse_intensity == pytest.approx(1 / d + n_s / (U * d) + 1 / (b * U))


def test_appendix_a_ratio_by_hand():
    # Cross-attention, SHAPE: PIE 360/96 = 3.75, PID 192/96 = 2 -> ratio 1.875
    assert cost.inverse_intensity_ratio("cross_attention", **SHAPE) == pytest.approx(1.875)
    # Encoder: PIE 112/384, PID 56/160 -> (7/24)/(7/20) = 20/24
    assert cost.inverse_intensity_ratio("encoder_self_attention", **SHAPE) == pytest.approx(20 / 24)


def test_table1_is_the_printed_table_term_by_term():
    # U=2, b=3, n_s=5, n_t=7, d=11 (d^2 = 121), each term of the paper's Table 1 worked by hand
    table = cost.table1(U=2, b=3, n_s=5, n_t=7, d=11)
    assert table == {
        # U b n_s d + d^2 = 330 + 121; U b n_s d^2 = 3630
        ("encoder_self_attention", "pie"): cost.Cost(memory=451, ops=3630),
        # b n_s d + d^2 = 165 + 121; b n_s d^2 = 1815
        ("encoder_self_attention", "pid"): cost.Cost(memory=286, ops=1815),
        # U b n_t^2 d + n_t d^2 = 3234 + 847; U b n_t d^2 = 5082
        ("decoder_self_attention", "pie"): cost.Cost(memory=4081, ops=5082),
        ("decoder_self_attention", "pid"): cost.Cost(memory=4081, ops=5082),
        # U b n_s n_t d + U b n_t d + n_t d^2 = 2310 + 462 + 847
        ("cross_attention", "pie"): cost.Cost(memory=3619, ops=5082),
        # b n_s n_t d + U b n_t d + n_t d^2 = 1155 + 462 + 847
        ("cross_attention", "pid"): cost.Cost(memory=2464, ops=5082),
    }


def test_book_terms_are_the_queries_and_the_prompts_by_hand():
    # SHAPE: U=2, b=1, n_s=10, n_t=3, d=4, n_p=2
    extra = cost.book_terms(**SHAPE)
    assert extra[("decoder_self_attention", "pie")] == cost.Cost(memory=24, ops=0)       # U b n_t d
    assert extra[("decoder_self_attention", "pid")] == cost.Cost(memory=24 + 48, ops=0)  # + U b n_t n_p d
    assert extra[("encoder_self_attention", "pie")] == cost.Cost(memory=16, ops=64)      # U b n_p d, U b n_p d^2
    assert extra[("cross_attention", "pie")] == cost.Cost(memory=48, ops=0)              # U b n_p n_t d
    assert extra[("encoder_self_attention", "pid")] == extra[("cross_attention", "pid")] == cost.Cost(0, 0)
    book = cost.book_table(**SHAPE)
    printed = cost.table1(**{k: v for k, v in SHAPE.items() if k != "n_p"})
    assert all(book[cell] == printed[cell] + extra[cell] for cell in book)


def test_without_prompts_only_the_query_term_separates_book_and_paper():
    shape = dict(U=30, b=8, n_s=289, n_t=56, d=512)
    book, printed = cost.book_table(**shape), cost.table1(**shape)
    for (component, method), cell in book.items():
        query = 30 * 8 * 56 * 512 if component == "decoder_self_attention" else 0
        assert cell == printed[(component, method)] + cost.Cost(memory=query, ops=0)
        assert book[(component, "pid")].ops <= book[(component, "pie")].ops


def test_u_equals_one_without_prompt_makes_methods_equal_where_they_should():
    shape = dict(U=1, b=2, n_s=50, n_t=7, d=16, n_p=0)
    for component in cost.COMPONENTS:
        assert cost.COMPONENT_FUNCTIONS[component]("pie", **shape) == \
            cost.COMPONENT_FUNCTIONS[component]("pid", **shape)


def test_roofline_by_hand():
    a100 = cost.device_preset("A100")
    assert a100.ridge_point == pytest.approx(312e12 / 1.555e12)
    assert cost.attainable_flops(10, a100) == pytest.approx(10 * 1.555e12)   # memory-bound
    assert cost.attainable_flops(1000, a100) == pytest.approx(312e12)        # compute-bound
    assert cost.attainable_flops(a100.ridge_point, a100) == pytest.approx(312e12)


def test_forward_work_by_hand():
    # P=100 params, b=2, 1 new token, context 3, d=4, L=1, fp32:
    # FLOPs 2*100*2 + 4*1*4*2*3 = 496; elements 100 + 2*1*4*2*(3+1) = 164 -> 656 bytes
    w = cost.forward_work(100, 2, 1, 3, 4, 1, 4)
    assert (w.flops, w.bytes) == (496, 656)
    dev = cost.Device("toy", peak_flops=1000.0, bandwidth=100.0)
    assert w.roofline_seconds(dev) == pytest.approx(max(496 / 1000, 656 / 100))
    assert math.isclose(w.intensity, 496 / 656)


@pytest.mark.parametrize("call, match", [
    (lambda: cost.cross_attention("pie", 0, 1, 1, 1, 1), "U must be in"),
    (lambda: cost.cross_attention("pie", 1, 0, 1, 1, 1), "b must be in"),
    (lambda: cost.cross_attention("pie", 1, 1, 1, 1, 1, n_p=-1), "n_p must be in"),
    (lambda: cost.cross_attention("pix", 1, 1, 1, 1, 1), "method must be one of"),
    (lambda: cost.inverse_intensity_ratio("ffn", 1, 1, 1, 1, 1), "component must be one of"),
    (lambda: cost.table1(U=0, b=1, n_s=1, n_t=1, d=1), "U must be in"),
    (lambda: cost.book_terms(U=1, b=1, n_s=1, n_t=1, d=1, n_p=-2), "n_p must be in"),
    (lambda: cost.device_preset("v100"), "name must be one of"),
    (lambda: cost.attainable_flops(0, cost.device_preset("t4")), "intensity must be in"),
    (lambda: cost.Device("x", peak_flops=-1, bandwidth=1), "peak_flops must be in"),
    (lambda: cost.forward_work(100, 0, 1, 0, 4, 1), "batch must be in"),
    (lambda: cost.forward_work(100, 1, 1, -3, 4, 1), "context must be in"),
])
def test_bad_input_is_a_clear_value_error(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_pipelined_steps_by_hand():
    # Figure 2, "A B C <sep> D E": ends at steps 1+3=4 and 2+2=4 (Δt=1), the empty one at 3: 4 steps
    assert cost.pipelined_steps([3, 2], delta_t=1) == 4
    # Δt=2: 0+3+1=4, 2+2+1=5, empty at 2*2+1=5; Δt=3: 4, 6, empty at 7
    assert cost.pipelined_steps([3, 2], delta_t=2) == 5
    assert cost.pipelined_steps([3, 2], delta_t=3) == 7
    # one sequence: 3 + 2 tokens, one separator, </s>
    assert cost.sequential_steps([3, 2]) == 7
    # 7 subsequences of 5 tokens: 7*5 + 6 + 1 = 42 sequential steps against 6 + 5 + 1 = 12
    assert cost.sequential_steps([5] * 7) == 42 and cost.pipelined_steps([5] * 7, 1) == 12


def test_pipelined_steps_match_the_scheduled_decoder():
    import random

    from pidutils import pipelined as pl
    rng = random.Random(0)
    for _ in range(20):
        script = [[10 + rng.randrange(5) for _ in range(rng.randrange(0, 6) or 1)] for _ in range(rng.randrange(1, 8))]
        for delta_t in (1, 2, 3, 4):
            step = pl.scripted_step([script], delta_t=delta_t, eos=1, vocab_size=20)
            schedule = pl.algorithm1(step, b=1, delta_t=delta_t, time_max=200, sub_max=50, bos=0, eos=1)[0]
            assert schedule.steps == cost.pipelined_steps([len(s) for s in script], delta_t)


def test_speculative_formulas_by_hand():
    # α = 0.5, γ = 2: 1 + 0.5 + 0.25 = 1.75 tokens per round; c = 0.25: 1.75 / 1.5 = 7/6
    assert cost.expected_tokens(0.5, 2) == pytest.approx(1.75)
    assert cost.speculative_speedup(0.5, 2, 0.25) == pytest.approx(7 / 6)
    # α = 0.8, γ = 5: (1 - 0.8^6) / 0.2 = 3.68928; c = 0.1: / 1.5 = 2.45952
    assert cost.expected_tokens(0.8, 5) == pytest.approx(3.68928)
    assert cost.speculative_speedup(0.8, 5, 0.1) == pytest.approx(2.45952)
    # α = 0: every guess falls, one token per round; α = 1: all γ stand, plus one
    assert cost.expected_tokens(0.0, 7) == 1.0 and cost.expected_tokens(1.0, 7) == 8.0
    # the paper's Table 2 rows, T5-XXL with T5-small (c ≈ 0.02 was not printed; the speed-up
    # formula at their α and γ with c = 0 bounds the printed 3.4x from above)
    assert cost.speculative_speedup(0.75, 7, 0.0) == pytest.approx((1 - 0.75 ** 8) / 0.25)
    assert cost.speculative_speedup(0.75, 7, 0.0) > 3.4


def test_best_gamma_by_hand():
    # α = 0.5, c = 0.25: γ=1 1.5/1.25 = 1.2, γ=2 1.75/1.5 = 1.1667, γ=3 1.875/1.75 < that: best 1
    assert cost.best_gamma(0.5, 0.25) == 1
    # α = 0.9, c = 0.05: γ=12 (1 - 0.9^13)/0.1 / 1.6 = 7.45813/1.6 = 4.66133, γ=13 7.71232/1.65 = 4.67413,
    # γ=14 7.94109/1.7 = 4.67123
    assert cost.speculative_speedup(0.9, 12, 0.05) == pytest.approx(4.66133, abs=1e-5)
    assert cost.speculative_speedup(0.9, 13, 0.05) == pytest.approx(4.67413, abs=1e-5)
    assert cost.speculative_speedup(0.9, 14, 0.05) == pytest.approx(4.67123, abs=1e-5)
    assert cost.best_gamma(0.9, 0.05) == 13
    # a free draft and a perfect one: the longest γ allowed
    assert cost.best_gamma(1.0, 0.0, max_gamma=12) == 12
    # a draft that costs as much as the target is never worth it: γ = 1 is the least bad
    assert cost.best_gamma(0.9, 1.0) == 1


@pytest.mark.parametrize("call, match", [
    (lambda: cost.expected_tokens(1.5, 3), "alpha must be in"),
    (lambda: cost.expected_tokens(0.5, 0), "gamma must be in"),
    (lambda: cost.speculative_speedup(0.5, 3, -0.1), "c must be in"),
    (lambda: cost.best_gamma(0.5, 0.1, max_gamma=0), "max_gamma must be in"),
])
def test_speculative_formulas_refuse_bad_input(call, match):
    with pytest.raises(ValueError, match=match):
        call()


# --- Chapter 7: decoder-only, one shared prefix -------------------------------------------------------

def test_prefix_step_cost_by_hand():
    """U = 10 questions of b = 2 documents of 400 tokens, 6 tokens of suffix so far; 2 layers of
    2 key heads of 32 dimensions (128 elements of K and V a token a layer), 1e6 weights, float32."""
    shape = dict(U=10, b=2, n_prefix=400, n_suffix=6, params=1_000_000, layers=2, heads=4, kv_heads=2, head_dim=32)
    per_token = 2 * 2 * 2 * 32  # K and V, 2 layers, 2 heads, 32 dims = 256 elements
    shared, cached = cost.prefix_step_cost("shared", **shape), cost.prefix_step_cost("cached", **shape)
    assert per_token == cost.kv_elements(1, layers=2, kv_heads=2, head_dim=32) == 256
    assert shared.weights == cached.weights == 4_000_000
    assert shared.prefix_kv == 4 * 2 * 400 * 256 == 819_200  # once per document
    assert cached.prefix_kv == 10 * shared.prefix_kv == cost.prefix_step_cost("repeated", **shape).prefix_kv
    assert shared.suffix_kv == cached.suffix_kv == 4 * 20 * 6 * 256 == 122_880
    assert shared.operations == cached.operations == 20 * (1_000_000 + 2 * 2 * 4 * 32 * 406) == 24_157_440
    assert shared.total == 4_000_000 + 819_200 + 122_880


def test_prefix_kv_held_by_hand_and_bad_input():
    assert cost.prefix_kv_held("shared", U=30, b=1, n_prefix=100, layers=4, kv_heads=2, head_dim=32,
                               bytes_per_element=2) == 2 * 100 * 2 * 4 * 2 * 32
    assert cost.prefix_kv_held("repeated", U=30, b=1, n_prefix=100, layers=4, kv_heads=2, head_dim=32) == \
        30 * 4 * 100 * 2 * 4 * 2 * 32
    with pytest.raises(ValueError, match="way"):
        cost.prefix_kv_held("copied", U=1, b=1, n_prefix=1, layers=1, kv_heads=1, head_dim=1)
    with pytest.raises(ValueError, match="U"):
        cost.prefix_step_cost("shared", U=0, b=1, n_prefix=1, n_suffix=1, params=1, layers=1, heads=1, kv_heads=1,
                              head_dim=1)
    with pytest.raises(ValueError, match="heads"):
        cost.prefix_step_cost("shared", U=1, b=1, n_prefix=1, n_suffix=1, params=1, layers=1, heads=1, kv_heads=2,
                              head_dim=1)
