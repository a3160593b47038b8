"""Speculative sampling gives the target's distribution: exact sequence probabilities and χ² tests (chapter 5)."""
from __future__ import annotations

import pytest
import torch

from pidutils import distribution as dist
from pidutils import speculative as sp
from pidutils import t5
from pidutils.models import random_t5

SMALL = dict(initializer_factor=1.0, vocab_size=6, num_layers=1, d_model=32, d_ff=64, d_kv=8, num_heads=4)
LENGTH, GAMMA = 5, 3  # five tokens: a first round of up to γ + 1 = 4 tokens, and the start of the next


def memory_of(model, source):
    mask = torch.ones_like(source)
    return t5.cross_memory(model, t5.encode(model, source, mask), mask)


@pytest.fixture(scope="module")
def close_pair():
    """A random target with a six-token vocabulary and a draft that is the target plus noise: several
    guesses stand in most rounds, and some fall."""
    target = random_t5("t5-tiny", seed=1, **SMALL)
    draft = dist.perturbed(target, scale=0.1, seed=2)
    source = torch.randint(2, 6, (1, 12), generator=torch.Generator().manual_seed(0))
    return target, draft, memory_of(target, source), memory_of(draft, source)


def test_the_exact_distribution_is_the_product_of_the_models_own_conditionals(close_pair):
    target, _, memory, _ = close_pair
    sampling = sp.Sampling(1.3)
    exact = dist.sequence_distribution(target, memory, sampling, 3)
    # 1 up to float32 rounding: rows that share a prefix compute its logits in float32, and a GEMM split
    # over threads may round them differently by row (3e-8 off here on 2 threads, 0 on 1)
    assert exact.shape == (6 ** 3,) and float(exact.sum()) == pytest.approx(1.0, abs=1e-6)
    eos, pad, start = 1, 0, target.config.decoder_start_token_id
    for sequence in ([2, 3, 4], [5, 0, 2], [1, 0, 0], [3, 1, 0], [3, 1, 2], [1, 4, 0]):
        expected, ended = 1.0, False
        for j, token in enumerate(sequence):  # one decoder pass per prefix, the obvious way
            if ended:
                expected *= float(token == pad)
                continue
            ids = torch.tensor([[start] + sequence[:j]])
            bias = t5.causal_bias(t5.bias_table(target), 0, j + 1, torch.ones_like(ids, dtype=torch.bool))
            with torch.inference_mode():
                logits = t5.decoder_forward(target, ids, memory, bias)[0, -1]
            expected *= float(sp.warp(logits.double(), sampling)[token])
            ended = token == eos
        index = dist.sequence_index(torch.tensor([sequence]), 6, 3, pad)
        assert float(exact[index]) == pytest.approx(expected, rel=1e-5, abs=1e-12), sequence


def test_a_sequence_index_pads_short_rows():
    assert dist.sequence_index(torch.tensor([[2, 1]]), 6, 4, 0).tolist() == [2 * 216 + 1 * 36]
    assert dist.sequence_index(torch.tensor([[1, 2, 3, 4, 5]]), 6, 2, 0).tolist() == [1 * 6 + 2]


def test_whole_rounds_in_rows_of_a_batch_sample_the_target_distribution(close_pair):
    """9,600 samples of five tokens, 32 rows a batch, γ = 3: rounds keep several guesses, guesses fall,
    and the counts fit the target's exact distribution; the draft's own samples do not."""
    target, draft, mt, md = close_pair
    sampling = sp.Sampling(1.0)
    exact = dist.sequence_distribution(target, mt, sampling, LENGTH)
    tokens, counts = dist.speculative_samples(target, draft, mt.repeated(32), md.repeated(32), GAMMA, sampling,
                                              LENGTH, 300, torch.Generator().manual_seed(1))
    assert counts["fallen"] > 1000 and counts["long_runs"] > 100  # rejections, and rounds of 3 or more tokens
    observed = torch.bincount(dist.sequence_index(tokens.flatten(0, 1), 6, LENGTH, 0), minlength=6 ** LENGTH)
    assert dist.chi_square(observed, exact)[2] > 0.01
    alone = sp.autoregressive(draft, md.repeated(9600), sampling=sampling, max_new_tokens=LENGTH, pad=0,
                              generator=torch.Generator().manual_seed(2))
    assert dist.chi_square(torch.bincount(dist.sequence_index(alone, 6, LENGTH, 0), minlength=6 ** LENGTH),
                           exact)[2] < 1e-6
    # 3% of the mass moved between the two likeliest sequences is caught at the same sample size
    a, b = exact.topk(2).indices
    shifted = exact.clone()
    shifted[a] -= 0.03
    shifted[b] += 0.03
    wrong = torch.multinomial(shifted.float(), 9600, replacement=True, generator=torch.Generator().manual_seed(3))
    assert dist.chi_square(torch.bincount(wrong, minlength=6 ** LENGTH), exact)[2] < 0.01


@pytest.mark.parametrize("sampling", [sp.Sampling(1.5, top_k=4), sp.Sampling(2.0, top_p=0.8)])
def test_warped_sampling_of_whole_rounds_gives_the_warped_target(close_pair, sampling):
    target, draft, mt, md = close_pair
    exact = dist.sequence_distribution(target, mt, sampling, LENGTH)
    tokens, counts = dist.speculative_samples(target, draft, mt.repeated(32), md.repeated(32), GAMMA, sampling,
                                              LENGTH, 150, torch.Generator().manual_seed(4))
    assert counts["fallen"] > 0 and counts["long_runs"] > 0
    observed = torch.bincount(dist.sequence_index(tokens.flatten(0, 1), 6, LENGTH, 0), minlength=6 ** LENGTH)
    assert dist.chi_square(observed, exact)[2] > 0.01


def test_a_perturbed_copy_differs_from_its_model_but_stays_close(close_pair):
    target, draft, _, _ = close_pair
    assert all(p.data_ptr() != q.data_ptr() for p, q in zip(target.parameters(), draft.parameters()))
    assert not torch.equal(target.lm_head.weight, draft.lm_head.weight)
    assert dist.perturbed(target, scale=0.0).state_dict().keys() == target.state_dict().keys()
    assert all(torch.equal(p, q) for p, q in zip(target.parameters(), dist.perturbed(target, scale=0.0).parameters()))
    with pytest.raises(ValueError, match="scale"):
        dist.perturbed(target, scale=-1.0)
    with pytest.raises(ValueError, match="length"):
        dist.sequence_distribution(target, memory_of(target, torch.tensor([[2, 3]])), sp.Sampling(1.0), 7)
