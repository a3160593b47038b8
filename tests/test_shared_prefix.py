"""Chapter 7: the decoder-only engine and shared-prefix decoding, against Hugging Face's own forward
and ``generate`` on random Llama-style models, and the log-sum-exp merge against one softmax."""
from __future__ import annotations

import random

import pytest
import torch
import torch.nn.functional as F
from transformers import LlamaForCausalLM

from pidutils import causal, metrics, models, prefixes, shared_prefix as sp, zoo
from pidutils.data import SLOTS, make_split


@pytest.fixture(scope="module")
def tokenizer():
    return zoo.load("pid-t5-tiny")[1]


@pytest.fixture(scope="module")
def split():
    return make_split("test").select(range(3))


def random_llama(vocab_size: int, *, seed: int = 0) -> LlamaForCausalLM:
    """A small random Llama with grouped-query attention (4 query heads, 2 key-value heads)."""
    return models.random_llama("llama-test", vocab_size=vocab_size, seed=seed)


# --- The merge ---------------------------------------------------------------------------------------

def test_attend_equals_pytorch_sdpa_with_grouped_heads():
    torch.manual_seed(0)
    q, k, v = torch.randn(3, 8, 5, 16), torch.randn(3, 2, 7, 16), torch.randn(3, 2, 7, 16)
    allowed = torch.rand(3, 5, 7) > 0.3
    allowed[..., 0] = True
    out, _ = causal.attend(q, k, v, causal.allowed_bias(allowed, q.dtype))
    expected = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed[:, None], enable_gqa=True)
    torch.testing.assert_close(out, expected, rtol=1e-5, atol=1e-5)


def test_merge_of_two_parts_equals_one_softmax_over_both_with_masks():
    """Keys split into a prefix part and a suffix part, with padded keys in both and a query that sees
    nothing of the suffix: merged, the two parts equal one softmax over the concatenation."""
    torch.manual_seed(1)
    q = torch.randn(2, 4, 3, 8)
    k_a, v_a, k_b, v_b = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8), torch.randn(2, 2, 4, 8), torch.randn(2, 2, 4, 8)
    allowed_a = torch.ones(2, 3, 6, dtype=torch.bool)
    allowed_a[1, :, 4:] = False  # the second document is two tokens shorter: padding
    allowed_b = torch.tril(torch.ones(3, 4, dtype=torch.bool), diagonal=1)[None].repeat(2, 1, 1)
    allowed_b[0, 0] = False  # this query sees no suffix key at all
    out_a, lse_a = causal.attend(q, k_a, v_a, causal.allowed_bias(allowed_a, q.dtype))
    out_b, lse_b = causal.attend(q, k_b, v_b, causal.allowed_bias(allowed_b, q.dtype))
    merged, lse = causal.merge_attention(out_a, lse_a, out_b, lse_b)
    whole, whole_lse = causal.attend(q, torch.cat([k_a, k_b], 2), torch.cat([v_a, v_b], 2),
                                     causal.allowed_bias(torch.cat([allowed_a, allowed_b], 2), q.dtype))
    torch.testing.assert_close(merged, whole, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(lse, whole_lse, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(merged[0, :, 0], out_a[0, :, 0])  # all its mass is on the prefix


# --- The engine's pass -------------------------------------------------------------------------------------

def test_causal_states_equal_hugging_face_forward(tokenizer, split):
    model = random_llama(len(tokenizer))
    ids = torch.tensor([tokenizer(split["dialogue"][0])["input_ids"][:60]])
    positions = torch.arange(60)[None]
    bias = causal.allowed_bias(causal.causal_allowed(torch.ones_like(ids, dtype=torch.bool), 60), model.dtype)
    with torch.no_grad():
        ours = model.lm_head(causal.causal_states(model, ids, positions,
                                                  lambda layer, q, k, v: causal.attend(q, k, v, bias)[0]))
        theirs = model(ids).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_training_tree_equals_each_branch_alone(tokenizer, split):
    """The training layout (document once, every question a branch) gives each branch the logits
    Hugging Face gives the branch's own sequence "document </s> Z_u : Y_u"."""
    model = random_llama(len(tokenizer), seed=3)
    slots, values = split["slots"][0][:3], split["values"][0][:3]
    rows = sp.branch_rows(tokenizer, split["dialogue"][0], slots, values)
    ids, positions, branch, _ = torch.tensor(rows).T[:, None]
    bias = causal.allowed_bias(sp.tree_allowed(branch, torch.ones_like(ids, dtype=torch.bool)), model.dtype)
    with torch.no_grad():
        tree = model.lm_head(causal.causal_states(model, ids, positions,
                                                  lambda layer, q, k, v: causal.attend(q, k, v, bias)[0]))[0]
        doc = (branch[0] == 0).sum()
        for u in range(1, 4):
            mine = branch[0] == u
            alone = model(torch.cat([ids[0, :doc], ids[0, mine]])[None]).logits[0, doc:]
            torch.testing.assert_close(tree[mine], alone, rtol=1e-4, atol=1e-4)


def test_training_loss_is_the_answers_cross_entropy(tokenizer, split):
    batch = sp.shared_prefix_batches(split, tokenizer, batch_size=2)(random.Random(0))
    labelled = batch["labels"] != -100
    assert labelled.sum() > 0 and (batch["labels"][~labelled] == -100).all()
    model = random_llama(len(tokenizer))
    loss = sp.shared_prefix_loss(model, batch)
    loss.backward()
    assert torch.isfinite(loss) and model.model.layers[0].self_attn.q_proj.weight.grad.abs().sum() > 0


# --- Decoding: every way makes Hugging Face generate's tokens ----------------------------------------------

@pytest.mark.parametrize("way", sp.WAYS)
@pytest.mark.parametrize("b, U", [(1, 3), (3, 4)])
def test_each_way_equals_hugging_face_generate(tokenizer, split, way, b, U):
    """One (document, question) at a time through ``generate``, against all b x U at once: documents
    of different lengths (right-padded prefixes) and questions of different lengths (left-padded)."""
    model = random_llama(len(tokenizer), seed=U)
    documents, questions = list(split["dialogue"][:b]), list(split["slots"][0][5:5 + U])
    assert len({len(tokenizer(d)["input_ids"]) for d in documents}) == b
    assert len({len(sp.prompt_ids(tokenizer, q)) for q in questions}) > 1
    ids = sp.shared_prefix_generate_ids(model, tokenizer, documents, questions, way=way)
    assert ids.shape[0] == b * U
    for row, (d, q) in enumerate((d, q) for d in documents for q in questions):
        reference = sp.hf_reference(model, tokenizer, d, q)
        assert ids[row, :len(reference)].tolist() == reference


# --- Bad input -------------------------------------------------------------------------------------------------

def test_bad_input_is_a_value_error_naming_the_parameter(tokenizer, split):
    model = random_llama(len(tokenizer))
    documents = list(split["dialogue"][:1])
    with pytest.raises(ValueError, match="questions"):
        sp.shared_prefix_generate_ids(model, tokenizer, documents, [])
    with pytest.raises(ValueError, match="questions must fit the context"):
        sp.shared_prefix_generate_ids(model, tokenizer, documents, ["hotel-area"], max_new_tokens=900)
    with pytest.raises(ValueError, match="model must be a Llama-style causal LM"):
        sp.shared_prefix_generate_ids(zoo.load("pid-t5-tiny")[0], tokenizer, documents, ["hotel-area"])
    with pytest.raises(ValueError, match="way"):
        sp.shared_prefix_generate_ids(model, tokenizer, documents, ["hotel-area"], way="copied")
    with pytest.raises(ValueError, match="max_new_tokens"):
        sp.shared_prefix_generate_ids(model, tokenizer, documents, ["hotel-area"], max_new_tokens=0)


# --- Chapter 7's measurement ------------------------------------------------------------------------------------

def test_prefix_row_holds_the_prefix_once_and_reports_consistent_ratios(tokenizer, split):
    """The shared way holds one copy of each document's prefix KV where the cached way holds U, as
    measured from the tensors and as the cost model predicts; the speed-ups are the ratios of the
    times the row reports."""
    model = random_llama(len(tokenizer))
    row = prefixes.prefix_row(model, tokenizer, list(split["dialogue"][:2]), 5, repeats=1)
    assert row["b"] == 2 and row["U"] == 5
    assert row["cached_prefix_kv_bytes"] == 5 * row["shared_prefix_kv_bytes"]
    for way in ("cached", "shared"):
        assert row[f"{way}_prefix_kv_bytes"] == row[f"{way}_prefix_kv_predicted"]
    assert row["shared_kv_bytes"] < row["cached_kv_bytes"] < row["repeated_kv_bytes"] + row["cached_prefix_kv_bytes"]
    assert row["speedup_vs_repeated"] == pytest.approx(row["repeated_s"] / row["shared_s"])
    assert row["decoding_speedup_vs_cached"] == pytest.approx(row["cached_decoding_s"] / row["shared_decoding_s"])
    assert row["predicted_step_ratio"] > 1


def test_questions_cycle_through_the_slots():
    assert prefixes.questions_for(3) == SLOTS[:3]
    assert prefixes.questions_for(31) == SLOTS + SLOTS[:1]
    with pytest.raises(ValueError, match="U"):
        prefixes.questions_for(0)


# --- The shipped model ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def shipped():
    """The first of chapter 7's two training runs (prefix-llama-base, test JGA 0.80): a trained model,
    whose answers end at ``</s>`` after different numbers of tokens."""
    return zoo.load("prefix-llama-base")


@pytest.mark.parametrize("way", sp.WAYS)
def test_each_way_equals_generate_on_the_shipped_model(shipped, split, way):
    """Rows end at different steps and are padded after: every way still makes generate's tokens,
    and nothing but padding after each row's ``</s>``."""
    model, tokenizer = shipped
    documents, questions = list(split["dialogue"][:2]), list(split["slots"][0])
    ids = sp.shared_prefix_generate_ids(model, tokenizer, documents, questions, way=way)
    lengths = set()
    for row, (d, q) in enumerate((d, q) for d in documents for q in questions):
        reference = sp.hf_reference(model, tokenizer, d, q)
        assert reference[-1] == tokenizer.eos_token_id
        assert ids[row, :len(reference)].tolist() == reference
        assert (ids[row, len(reference):] == tokenizer.pad_token_id).all()
        lengths.add(len(reference))
    assert len(lengths) > 1
