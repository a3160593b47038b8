"""PID decoding: shared cross-attention K/V against the copy path and Hugging Face's own generate."""
import pytest
import torch
from transformers import T5EncoderModel

from pidutils import data, pid, t5
from pidutils.models import random_t5


@pytest.fixture(scope="module")
def docs():
    return [data.make_dialogue(900 + i)["dialogue"] for i in range(3)]


# Three documents with different U: the batch is padded to U = 7.
PROMPTS = [data.SLOTS[:5], data.SLOTS[3:10], data.SLOTS[20:22]]


def close(a: torch.Tensor, b: torch.Tensor, rtol: float = 1e-5) -> bool:
    """Equal within ``rtol`` of the logits' scale (random T5 logits reach the thousands)."""
    return bool((a - b).abs().max() <= rtol * b.abs().max())


def test_shared_copy_and_reference_give_identical_tokens_and_close_logits(model, tokenizer, docs):
    shared, s_scores = pid.pid_generate_ids(model, tokenizer, docs, PROMPTS, max_new_tokens=6, return_scores=True)
    copy, c_scores = pid.pid_generate_ids(model, tokenizer, docs, PROMPTS, max_new_tokens=6, cross="copy",
                                          return_scores=True)
    ref, r_scores = pid.pid_reference(model, tokenizer, docs, PROMPTS, max_new_tokens=6)
    assert shared.shape == (3 * 7, 6)
    assert torch.equal(shared, copy) and torch.equal(shared, ref)
    assert close(s_scores, c_scores) and close(s_scores, r_scores)


def test_reference_with_padding_equals_one_prompt_at_a_time(model, tokenizer, docs):
    ref, _ = pid.pid_reference(model, tokenizer, docs[:1], [PROMPTS[0]], max_new_tokens=5)
    for u, prompt in enumerate(PROMPTS[0]):
        alone, _ = pid.pid_reference(model, tokenizer, docs[:1], [[prompt]], max_new_tokens=5)
        assert torch.equal(alone[0], ref[u])


def test_answers_drop_the_padding_prompts(model, tokenizer, docs):
    answers = pid.pid_generate(model, tokenizer, docs, PROMPTS, max_new_tokens=4)
    assert [len(a) for a in answers] == [len(p) for p in PROMPTS]
    one = pid.pid_generate(model, tokenizer, docs[2:], PROMPTS[2:], max_new_tokens=4)
    assert one[0] == answers[2]


def test_teacher_forced_logits_equal_hugging_face_on_copied_states(model, tokenizer, docs):
    enc = tokenizer(docs, padding=True, return_tensors="pt")
    ids, valid, U = pid.decoder_prefixes(model, tokenizer, PROMPTS)
    encoded = t5.encode(model, enc["input_ids"], enc["attention_mask"])
    bias = t5.causal_bias(t5.bias_table(model), 0, ids.shape[1], valid)
    ours = t5.decoder_forward(model, ids, t5.cross_memory(model, encoded, enc["attention_mask"]), bias)
    hf = model(encoder_outputs=(encoded.repeat_interleave(U, 0),), attention_mask=enc["attention_mask"].repeat_interleave(U, 0),
               decoder_input_ids=ids, decoder_attention_mask=valid.long()).logits
    assert close(ours[valid], hf[valid])


def test_fold_unfold_are_inverse_and_folded_attention_is_exact():
    torch.manual_seed(0)
    b, U, h, q, d, n = 2, 5, 3, 4, 8, 11
    queries = torch.randn(b * U, h, q, d)
    assert t5.fold(queries, b).shape == (b, h, U * q, d)
    assert torch.equal(t5.unfold(t5.fold(queries, b), b * U), queries)
    keys, values = torch.randn(b, h, n, d), torch.randn(b, h, n, d)
    folded = t5.unfold(torch.nn.functional.scaled_dot_product_attention(t5.fold(queries, b), keys, values), b * U)
    per_prompt = torch.nn.functional.scaled_dot_product_attention(
        queries, keys.repeat_interleave(U, 0), values.repeat_interleave(U, 0))
    torch.testing.assert_close(folded, per_prompt, rtol=1e-5, atol=1e-6)


def test_cross_memory_is_b_ns_d_per_layer_shared_and_U_times_that_copied(model, tokenizer, docs):
    enc = tokenizer(docs, padding=True, return_tensors="pt")
    encoded = t5.encode(model, enc["input_ids"], enc["attention_mask"])
    b, n_s = enc["input_ids"].shape
    cfg = model.config
    per_layer = 2 * b * n_s * cfg.num_heads * cfg.d_kv * 4  # K and V, fp32
    shared = t5.cross_memory(model, encoded, enc["attention_mask"])
    copied = t5.cross_memory(model, encoded, enc["attention_mask"], copies=7)
    assert shared.nbytes() == cfg.num_decoder_layers * per_layer
    assert copied.nbytes() == 7 * shared.nbytes()


def test_pid_loss_is_huggingface_loss_with_one_encoding_per_dialogue(model, tokenizer):
    import random
    split = data.make_dataset(train=4, validation=1, test=1, seed=2)["train"]
    batch = pid.pid_batches(split, tokenizer, model, batch_size=2)(random.Random(0))
    rows = batch["decoder_input_ids"].shape[0]
    assert rows == 2 * len(data.SLOTS)
    encoded = t5.encode(model, batch["input_ids"], batch["attention_mask"])
    hf = model(encoder_outputs=(encoded.repeat_interleave(len(data.SLOTS), 0),),
               attention_mask=batch["attention_mask"].repeat_interleave(len(data.SLOTS), 0),
               decoder_input_ids=batch["decoder_input_ids"], labels=batch["labels"]).loss
    ours = pid.pid_loss(model, batch)
    torch.testing.assert_close(ours, hf, rtol=1e-5, atol=1e-5)
    # Only answer tokens and </s> are labelled: every row ends its labels with </s>.
    labelled = batch["labels"] != -100
    assert all(int(r[m][-1]) == model.config.eos_token_id for r, m in zip(batch["labels"], labelled))
    model.zero_grad()
    ours.backward()
    assert model.get_encoder().block[0].layer[0].SelfAttention.q.weight.grad.abs().sum() > 0
    model.zero_grad()


@pytest.mark.parametrize("documents, prompts, kwargs, match", [
    (["a dialogue"], [[]], {}, "U .* must be in"),
    (["a dialogue"], [["hotel-area", " "]], {}, r"prompts\[0\]\[1\] must not be empty"),
    (["a dialogue", "another"], [["hotel-area"]], {}, "same batch size"),
    (["a dialogue"], [["hotel " * 600]], {}, "at most 511 tokens"),
    (["a dialogue"], [["hotel-area"]], {"max_new_tokens": 0}, "max_new_tokens must be in"),
    (["a dialogue"], [["hotel-area"]], {"cross": "half"}, "cross must be one of"),
])
def test_bad_input_is_a_value_error(model, tokenizer, documents, prompts, kwargs, match):
    with pytest.raises(ValueError, match=match):
        pid.pid_generate(model, tokenizer, documents, prompts, **kwargs)


def test_an_encoder_only_model_is_refused(tokenizer):
    encoder_only = T5EncoderModel(random_t5("t5-tiny").config)
    with pytest.raises(ValueError, match="model must be a T5 encoder-decoder"):
        pid.pid_generate(encoder_only, tokenizer, ["a dialogue"], [["hotel-area"]])
