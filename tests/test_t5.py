"""The shared decoder pass (pidutils.t5) against Hugging Face's T5: biases, cache, rollback."""
import pytest
import torch

from pidutils import t5
from pidutils.models import random_t5


def close(a, b, tol=1e-5):
    """Equal within ``tol`` of the largest logit (random T5s have logits in the hundreds)."""
    return bool((a - b).abs().max() <= tol * b.abs().max())


@pytest.fixture(autouse=True)
def _no_grad():
    with torch.inference_mode():
        yield


@pytest.fixture(scope="module")
def setup():
    model = random_t5("t5-tiny", seed=1)
    torch.manual_seed(1)
    source = torch.randint(2, model.config.vocab_size, (2, 9))
    mask = torch.ones_like(source)
    mask[1, 6:] = 0
    memory = t5.cross_memory(model, t5.encode(model, source, mask), mask)
    target = torch.randint(2, model.config.vocab_size, (2, 7))
    return model, source, mask, memory, target


def test_relative_position_bias_is_hugging_faces(setup):
    model = setup[0]
    attn = model.get_decoder().block[0].layer[0].SelfAttention
    for past, new in ((0, 5), (4, 1), (3, 3)):
        hf = attn.compute_bias(new, past + new, device="cpu", past_seen_tokens=past)
        position = torch.arange(past + new)
        distance = position[past:, None] - position[None, :]
        ours = t5.position_bias(t5.bias_table(model), distance, torch.ones_like(distance, dtype=torch.bool))
        assert torch.equal(ours[None], hf)
    far = torch.tensor([[0, 127, 128, 129, 5000]])  # every distance from max_distance on shares a bucket
    hf = attn.compute_bias(1, 5001, device="cpu", past_seen_tokens=5000)[0, :, 0, 5000 - far[0]]
    assert torch.equal(t5.position_bias(t5.bias_table(model), far, far >= 0)[:, 0], hf)


def test_the_bias_table_trains_after_an_inference_call():
    """The bucket index is cached (t5.distance_buckets): made first under inference mode, it must
    still let training index the bias weights and backpropagate into them."""
    model = random_t5("t5-tiny", seed=2)  # made here, outside the tests' inference mode
    t5.distance_buckets.cache_clear()
    t5.bias_table(model)  # under the autouse inference mode
    with torch.inference_mode(False):
        t5.bias_table(model)[:-1].sum().backward()
    weight = model.get_decoder().block[0].layer[0].SelfAttention.relative_attention_bias.weight
    assert weight.grad is not None and weight.grad.abs().sum() > 0


def test_full_pass_equals_hugging_face(setup):
    model, source, mask, memory, target = setup
    valid = torch.ones_like(target, dtype=torch.bool)
    ours = t5.decoder_forward(model, target, memory, t5.causal_bias(t5.bias_table(model), 0, 7, valid))
    hf = model(input_ids=source, attention_mask=mask, decoder_input_ids=target).logits
    assert close(ours, hf)


def test_cached_steps_equal_the_full_pass_and_write_in_place(setup):
    model, _, _, memory, target = setup
    valid = torch.ones_like(target, dtype=torch.bool)
    full = t5.decoder_forward(model, target, memory, t5.causal_bias(t5.bias_table(model), 0, 7, valid))
    cache = t5.KVCache.empty(model, rows=2, capacity=10)
    buffer = cache.keys[0].data_ptr()
    steps = [t5.decoder_forward(model, target[:, :3], memory, t5.causal_bias(t5.bias_table(model), 0, 3, valid[:, :3]), cache)]
    for i in range(3, 7):
        steps.append(t5.decoder_forward(model, target[:, i:i + 1], memory,
                                        t5.causal_bias(t5.bias_table(model), i, 1, valid[:, :i + 1]), cache))
    assert cache.length == 7 and cache.keys[0].data_ptr() == buffer
    assert close(torch.cat(steps, dim=1), full)


def test_a_full_cache_grows_and_keeps_its_tokens(setup):
    model, _, _, memory, target = setup
    valid = torch.ones_like(target, dtype=torch.bool)
    table = t5.bias_table(model)
    full = t5.decoder_forward(model, target, memory, t5.causal_bias(table, 0, 7, valid))
    cache = t5.KVCache.empty(model, rows=2, capacity=2)
    steps = [t5.decoder_forward(model, target[:, :3], memory, t5.causal_bias(table, 0, 3, valid[:, :3]), cache)]
    assert cache.capacity == 4
    steps += [t5.decoder_forward(model, target[:, i:i + 1], memory, t5.causal_bias(table, i, 1, valid[:, :i + 1]),
                                 cache) for i in range(3, 7)]
    assert cache.capacity == 8 and cache.length == 7
    assert close(torch.cat(steps, dim=1), full)


def test_truncate_rolls_back_exactly(setup):
    model, _, _, memory, target = setup
    valid = torch.ones((2, 7), dtype=torch.bool)
    cache = t5.KVCache.empty(model, rows=2, capacity=7)
    t5.decoder_forward(model, target[:, :5], memory, t5.causal_bias(t5.bias_table(model), 0, 5, valid[:, :5]), cache)
    cache.truncate(3)
    other = torch.flip(target[:, 3:5], dims=[1])  # a different continuation after the first three
    again = t5.decoder_forward(model, other, memory, t5.causal_bias(t5.bias_table(model), 3, 2, valid[:, :5]), cache)
    fresh = t5.decoder_forward(model, torch.cat([target[:, :3], other], 1), memory,
                               t5.causal_bias(t5.bias_table(model), 0, 5, valid[:, :5]))[:, 3:]
    assert cache.length == 5 and close(again, fresh)


def test_cache_limits_are_value_errors(setup):
    model, _, _, memory, target = setup
    cache = t5.KVCache.empty(model, rows=2, capacity=2)
    with pytest.raises(ValueError, match="length must be in"):
        cache.truncate(1)
    with pytest.raises(ValueError, match="capacity must be in"):
        t5.KVCache.empty(model, rows=1, capacity=0)
    with pytest.raises(ValueError, match="model must be a T5 encoder-decoder"):
        t5.check_t5(torch.nn.Linear(2, 2))


def test_pad_after_eos_pads_after_each_rows_end_and_marks_it_done():
    """The engine's end-of-sequence rule for a block of tokens (what chapter 5's rounds keep)."""
    eos, pad = 1, 0
    tokens = torch.tensor([[5, 1, 7, 1], [1, 4, 4, 4], [3, 3, 3, 3], [6, 6, 6, 6]])
    done = torch.tensor([False, False, True, False])
    out = t5.pad_after_eos(tokens, done, eos=eos, pad=pad)
    assert out.tolist() == [[5, 1, 0, 0], [1, 0, 0, 0], [0, 0, 0, 0], [6, 6, 6, 6]]
    assert done.tolist() == [True, True, True, False]  # rows that end here are marked; the last goes on
    assert tokens.tolist()[0] == [5, 1, 7, 1]  # the input is not changed


def test_trim_drops_the_columns_that_are_padding_in_every_row():
    assert t5.trim(torch.tensor([[5, 1, 0, 0], [2, 3, 1, 0]]), 0).tolist() == [[5, 1, 0], [2, 3, 1]]
    assert t5.trim(torch.tensor([[0, 0], [0, 0]]), 0).shape == (2, 0)
    assert t5.trim(torch.tensor([[0, 4]]), 0).tolist() == [[0, 4]]  # only trailing columns go


def test_greedy_stops_each_row_at_its_end_and_takes_any_pick(setup):
    model, _, _, memory, _ = setup
    start = t5.start_tokens(model, 2)
    valid = torch.ones_like(start, dtype=torch.bool)
    eos, pad = model.config.eos_token_id, 0
    # a pick that ends row 0 at once and never ends row 1
    def pick(logits):
        return torch.tensor([eos, 7]), None
    tokens, logits = t5.greedy(model, memory, start, valid, max_new_tokens=4, pad=pad, pick=pick)
    assert tokens.tolist() == [[eos, pad, pad, pad], [7, 7, 7, 7]] and logits.shape[:2] == (2, 4)
    greedy, _ = t5.greedy(model, memory, start, valid, max_new_tokens=5, pad=pad)
    assert torch.equal(greedy, t5.greedy(model, memory, start, valid, max_new_tokens=5, pad=pad,
                                         pick=t5.argmax_pick)[0])
    with pytest.raises(ValueError, match="max_new_tokens must be in"):
        t5.greedy(model, memory, start, valid, max_new_tokens=0, pad=pad)
    with pytest.raises(TypeError):  # the knobs are keyword-only
        t5.greedy(model, memory, start, valid, 4, pad)
