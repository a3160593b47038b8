"""Chapter 8: a document as k summary vectors. The identity compressor gives uncompressed PID; PID
over a compressed memory equals Hugging Face's generate on it, one prompt at a time; the memory's
bytes are k/n_s of the uncompressed ones; the two objectives' losses; bad input."""
import math
import random

import pytest
import torch

from pidutils import compression as cm
from pidutils import cost, pid, t5, zoo
from pidutils.batching import pid_batches
from pidutils.data import make_split
from pidutils.models import weights_per_decode_step


@pytest.fixture(scope="module")
def shipped():
    return zoo.load("pid-t5-tiny")


@pytest.fixture(scope="module")
def split():
    return zoo.test_split("pid-t5-tiny")


@pytest.fixture(scope="module")
def fresh(shipped):
    """An untrained compressor: its summary vectors are random token embeddings, so its answers are
    nonsense of full length, and every step of the check counts."""
    return cm.Compressor(shipped[0], max_k=16, base="pid-t5-tiny", seed=3)


def encoded(tokenizer, documents):
    return tokenizer(list(documents), padding=True, return_tensors="pt")


def test_the_identity_compressor_at_k_equal_to_n_s_is_uncompressed_pid(shipped, split):
    """Three documents of different lengths, k the padded n_s: the same tokens and logits as PID."""
    model, tokenizer = shipped
    documents, prompts = list(split["dialogue"][:3]), [split["slots"][0][:6], split["slots"][1][3:9], split["slots"][2]]
    n_s = encoded(tokenizer, documents)["input_ids"].shape[1]
    ids, scores = cm.compressed_generate_ids(model, tokenizer, cm.Identity(), documents, prompts, k=n_s,
                                             return_scores=True)
    ref, ref_scores = pid.pid_generate_ids(model, tokenizer, documents, prompts, return_scores=True)
    assert torch.equal(ids, ref)
    torch.testing.assert_close(scores, ref_scores, rtol=0, atol=0)
    with pytest.raises(ValueError, match="k must be n_s"):
        cm.compressed_generate_ids(model, tokenizer, cm.Identity(), documents, prompts, k=n_s - 1)


@pytest.mark.parametrize("k", [1, 5, 16])
def test_pid_over_a_compressed_memory_equals_generate_one_prompt_at_a_time(shipped, split, fresh, k):
    """Batched (two documents, seven prompts each), against Hugging Face's generate on each
    document's k vectors with one prompt."""
    model, tokenizer = shipped
    documents, prompts = list(split["dialogue"][3:5]), list(split["slots"][0][10:17])
    ids = cm.compressed_generate_ids(model, tokenizer, fresh, documents, [prompts, prompts], k=k)
    for row, (d, p) in enumerate((d, p) for d in documents for p in prompts):
        reference = cm.compressed_reference(model, tokenizer, fresh, d, p, k=k)
        assert ids[row, :len(reference)].tolist() == reference
    assert ids.shape[1] == cm.ANSWER_TOKENS  # nonsense, never ending: every step was compared


def test_a_document_compresses_to_the_same_vectors_alone_and_in_a_batch(shipped, split, fresh):
    model, tokenizer = shipped
    documents = list(split["dialogue"][5:8])
    enc = encoded(tokenizer, documents)
    with torch.no_grad():
        batch, mask = fresh.states(model, enc["input_ids"], enc["attention_mask"], k=7)
        for i, d in enumerate(documents):
            one = encoded(tokenizer, [d])
            alone, _ = fresh.states(model, one["input_ids"], one["attention_mask"], k=7)
            torch.testing.assert_close(batch[i:i + 1], alone, rtol=1e-5, atol=1e-5)
    assert batch.shape == (3, 7, model.config.d_model) and bool(mask.all())


@pytest.mark.parametrize("k", [4, 16])
def test_the_memory_is_k_over_n_s_of_the_uncompressed_one(shipped, split, fresh, k):
    """Measured from the tensors, for one document of n_s tokens, and as the cost model counts it."""
    model, tokenizer = shipped
    enc = encoded(tokenizer, split["dialogue"][:1])
    n_s = enc["input_ids"].shape[1]
    with torch.no_grad():
        full = t5.encoded_memory(model, enc["input_ids"], enc["attention_mask"]).nbytes()
        small = cm.compressed_memory(model, fresh, enc["input_ids"], enc["attention_mask"], k=k).nbytes()
    assert small * n_s == full * k
    shape = {"layers": model.config.num_decoder_layers, "heads": model.config.num_heads,
             "head_dim": model.config.d_kv}
    assert small == cost.memory_held(b=1, n_memory=k, **shape)
    assert full == cost.memory_held(b=1, n_memory=n_s, **shape)


def test_the_step_cost_reads_the_memory_once_per_document(shipped):
    """PID's memory read once per document is chapter 7's shared prefix; compressed, it is k tokens."""
    model, _ = shipped
    shape = {"layers": 2, "heads": 4, "head_dim": 32, "params": weights_per_decode_step(model)}
    full = cost.memory_step_cost(U=30, b=8, n_memory=320, n_self=6, **shape)
    small = cost.memory_step_cost(U=30, b=8, n_memory=16, n_self=6, **shape)
    assert full.prefix_kv == 4 * 8 * 320 * 2 * 2 * 4 * 32 and small.prefix_kv * 20 == full.prefix_kv
    assert full.suffix_kv == small.suffix_kv == 4 * 240 * 6 * 2 * 2 * 4 * 32
    assert full.weights == small.weights == 4 * shape["params"]
    assert full.operations - small.operations == 240 * 2 * 2 * 4 * 32 * (320 - 16)


def test_the_losses(shipped):
    """With the identity compressor (k = n_s) the KL objective is exactly 0 and the cross-entropy is
    PID's own loss; a fresh compressor's KL is positive and has gradients for its weights only."""
    model, tokenizer = shipped
    batch = pid_batches(make_split("validation", train=20000, seed=0).select(range(16)), tokenizer, model,
                        batch_size=2)(random.Random(0))
    with torch.no_grad():
        identity = batch | {"k": torch.tensor(batch["input_ids"].shape[1])}
        assert cm.compression_loss(model, cm.Identity(), identity, objective="kl").item() == 0.0
        torch.testing.assert_close(cm.compression_loss(model, cm.Identity(), identity, objective="ce"),
                                   pid.pid_loss(model, batch))
    compressor = cm.Compressor(model, max_k=8, base="pid-t5-tiny")
    model.requires_grad_(False)
    try:
        loss = cm.compression_loss(model, compressor, batch | {"k": torch.tensor(8)}, objective="kl")
        loss.backward()
    finally:
        model.requires_grad_(True)
    assert loss.item() > 0
    assert compressor.summary.grad is not None and compressor.summary.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def test_a_compressor_made_from_a_frozen_model_trains_its_encoder_copy(shipped):
    """Training freezes the model first; the compressor's copy of its encoder must still learn (the
    first training runs copied the frozen flags and trained only the summary vectors)."""
    model, _ = shipped
    model.requires_grad_(False)
    try:
        compressor = cm.Compressor(model, max_k=4, base="pid-t5-tiny")
    finally:
        model.requires_grad_(True)
    assert all(p.requires_grad for p in compressor.parameters())
    assert sum(p.numel() for p in compressor.encoder.parameters()) > 100 * compressor.summary.numel()


def test_k_is_drawn_log_uniformly_over_the_trained_range():
    """k = round(2^u), u uniform on [log2 8, log2 64]: P(k <= K) = (log2(K + 1/2) - 3) / 3 between
    the ends (6,000 draws: within 0.02, nearly four standard deviations)."""
    rng = random.Random(0)
    drawn = [cm.draw_k(rng, 8, 64) for _ in range(6000)]
    assert min(drawn) == 8 and max(drawn) == 64
    for K in (8, 16, 31, 50):
        assert abs(sum(k <= K for k in drawn) / len(drawn) - (math.log2(K + 0.5) - 3) / 3) < 0.02


def test_bad_input(shipped, split, fresh):
    model, tokenizer = shipped
    documents, prompts = list(split["dialogue"][:1]), [split["slots"][0][:2]]
    with pytest.raises(ValueError, match="k must be in"):
        cm.compressed_generate_ids(model, tokenizer, fresh, documents, prompts, k=0)
    with pytest.raises(ValueError, match="k must be in"):
        cm.compressed_generate_ids(model, tokenizer, fresh, documents, prompts, k=fresh.max_k + 1)
    other, _ = zoo.load("pie-t5-tiny")
    with pytest.raises(ValueError, match="compressor was trained for pid-t5-tiny"):
        cm.compressed_generate_ids(other, tokenizer, fresh, documents, prompts, k=4)
    with pytest.raises(ValueError, match="compressor must be"):
        cm.compressed_generate_ids(model, tokenizer, "summary", documents, prompts, k=4)
    with pytest.raises(ValueError, match="objective must be one of"):
        cm.compression_loss(model, fresh, {}, objective="mse")
