"""Cached greedy decoding against the uncached reference (chapter 1)."""
import pytest
import torch

from pidutils.decode import cache_argument, decode_n_tokens, decode_one_token, greedy_uncached, prefill, returned_cache
from pidutils.models import (SHAPES, count_parameters, pick_device, pick_dtype, random_t5,
                             weights_per_decode_step, weights_per_forward)


def _source(model, batch=3, length=20, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(2, model.config.vocab_size, (batch, length), generator=g)


def test_cached_tokens_equal_uncached(tiny_model):
    x = _source(tiny_model)
    cached = decode_n_tokens(tiny_model, x, 24)
    assert cached.shape == (3, 24)
    assert torch.equal(cached, greedy_uncached(tiny_model, x, 24))
    assert len(set(cached.flatten().tolist())) > 5, "a degenerate model would make the test vacuous"


def test_cached_logits_equal_uncached_within_tolerance(tiny_model):
    x = _source(tiny_model, batch=2)
    token, cache, encoded = prefill(tiny_model, x)
    prefix = torch.cat([torch.zeros(2, 1, dtype=torch.long), token], dim=1)
    with torch.inference_mode():
        for _ in range(10):
            out = tiny_model(encoder_outputs=encoded, decoder_input_ids=prefix[:, -1:], use_cache=True,
                             **{cache_argument(tiny_model): cache})
            full = tiny_model(encoder_outputs=encoded, decoder_input_ids=prefix, use_cache=False)
            scale = full.logits[:, -1].abs().max().item()  # fp32 agreement relative to the logit scale
            torch.testing.assert_close(out.logits[:, -1], full.logits[:, -1], rtol=0, atol=1e-5 * scale)
            prefix = torch.cat([prefix, out.logits[:, -1:].argmax(-1)], dim=1)
            cache = returned_cache(out)


def test_padding_mask_is_respected(tiny_model):
    x = _source(tiny_model, batch=1, length=12)
    padded = torch.cat([x, torch.zeros(1, 5, dtype=torch.long)], dim=1)
    mask = torch.cat([torch.ones(1, 12), torch.zeros(1, 5)], dim=1).long()
    assert torch.equal(decode_n_tokens(tiny_model, padded, 8, attention_mask=mask),
                       decode_n_tokens(tiny_model, x, 8))


def test_decode_one_token_extends_the_cache(tiny_model):
    token, cache, encoded = prefill(tiny_model, _source(tiny_model, batch=1))
    assert cache.get_seq_length() == 1
    _, cache = decode_one_token(tiny_model, token, cache, encoded)
    assert cache.get_seq_length() == 2


def test_model_shapes_and_weight_counts():
    small = random_t5("t5-small")
    assert count_parameters(small) == pytest.approx(60.5e6, rel=0.01)  # the published t5-small size
    assert weights_per_decode_step(small) < weights_per_forward(small) < count_parameters(small) + 1
    assert set(SHAPES) == {"t5-tiny", "t5-small", "t5-base"}
    assert pick_dtype("cpu") == torch.float32
    assert pick_device("cpu").type == "cpu"


@pytest.mark.parametrize("call, match", [
    (lambda m: decode_n_tokens(m, torch.ones(1, 4, dtype=torch.long), 0), "new_tokens must be in"),
    (lambda m: greedy_uncached(m, torch.ones(1, 4, dtype=torch.long), -2), "new_tokens must be in"),
    (lambda m: decode_n_tokens(m, torch.ones(0, 4, dtype=torch.long), 3), "input_ids must have shape"),
    (lambda m: random_t5("t5-huge"), "shape must be one of"),
    (lambda m: pick_device("tpu"), "device must be one of"),
])
def test_bad_input(tiny_model, call, match):
    with pytest.raises(ValueError, match=match):
        call(tiny_model)
