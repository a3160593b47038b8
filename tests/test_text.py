"""Tokenizer, metrics and PIE decoding on a random tiny model."""
import time

import pytest

from pidutils import data, metrics, zoo
from pidutils.models import random_t5
from pidutils.pie import pie_generate
from pidutils.tokenizer import check_vocab


def test_tokenizer_round_trips_and_follows_t5_conventions(tokenizer, corpus):
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    for text in list(corpus["test"]["dialogue"]) + [" ".join(data.SLOTS)]:
        ids = tokenizer(text)["input_ids"]
        assert ids[-1] == tokenizer.eos_token_id and tokenizer.unk_token_id not in ids
        assert tokenizer.decode(ids, skip_special_tokens=True) == text


def test_metrics_on_hand_made_cases():
    gold = [["a", "none", "x"], ["b", "c", "none"]]
    assert metrics.joint_goal_accuracy(gold, gold) == 1.0
    assert metrics.joint_goal_accuracy([["a", "none", "x"], ["b", "none", "none"]], gold) == 0.5
    assert metrics.slot_accuracy([["a", "none", "x"], ["b", "none", "none"]], gold) == pytest.approx(5 / 6)
    assert metrics.slot_accuracy([["z", "z", "z"], ["z", "z", "z"]], gold) == 0.0
    with pytest.raises(ValueError, match="same number"):
        metrics.joint_goal_accuracy([], [])
    with pytest.raises(ValueError, match="as many predicted values"):
        metrics.slot_accuracy([["a"], ["b"]], gold)


def test_pie_answers_every_prompt_and_batching_does_not_change_answers(model, tokenizer, corpus):
    docs = corpus["test"]["dialogue"][:2]
    prompts = [data.SLOTS[:3], data.SLOTS[5:7]]
    batched = pie_generate(model, tokenizer, docs, prompts, max_new_tokens=4)
    assert [len(a) for a in batched] == [3, 2]
    one_by_one = [[pie_generate(model, tokenizer, [d], [[p]], max_new_tokens=4)[0][0] for p in ps]
                  for d, ps in zip(docs, prompts)]
    assert batched == one_by_one


@pytest.mark.parametrize("documents, prompts, match", [
    (["a dialogue"], [[]], r"U \(the number of prompts"),
    (["a dialogue"], [["hotel-area", " "]], r"prompts\[0\]\[1\] must not be empty"),
    ([], [], "at least one document"),
    (["one", "two"], [["hotel-area"]], "same batch size"),
    (["word " * 600], [["hotel-area"]], "at most 512 tokens"),
])
def test_pie_bad_input(model, tokenizer, documents, prompts, match):
    with pytest.raises(ValueError, match=match):
        pie_generate(model, tokenizer, documents, prompts)


def test_vocabulary_mismatch_is_an_error(tokenizer):
    with pytest.raises(ValueError, match="tokenizer must fit the model's vocabulary"):
        check_vocab(tokenizer, random_t5("t5-tiny", vocab_size=500))


def test_zoo_names_and_offline_hub(monkeypatch):
    with pytest.raises(ValueError, match="pie-t5-tiny"):
        zoo.load("no-such-model")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    start = time.perf_counter()
    with pytest.raises(ConnectionError, match="Offline, use a shipped checkpoint: pid-t5-tiny, pie-t5-tiny"):
        zoo.load("t5-small")
    assert time.perf_counter() - start < 5


@pytest.mark.parametrize("optimizer, lr", [("adamw", 3e-3), ("adafactor", 1e-2)])
def test_training_loop_lowers_the_loss_and_reports_flops(tokenizer, corpus, optimizer, lr):
    from pidutils.pie import pie_batches
    from pidutils.train import train
    m = random_t5("t5-tiny", seed=1)
    m.resize_token_embeddings(len(tokenizer))
    report = train(m, pie_batches(corpus["train"], tokenizer, batch_size=4), lambda b: 1.0, steps=30,
                   lr=lr, warmup=5, progress=False, validate=lambda _: {"x": 1.0}, validate_every=10,
                   optimizer=optimizer)
    assert report.flops == 30 and len(report.validation) == 3
    assert sum(report.losses[-5:]) < sum(report.losses[:5])
    with pytest.raises(ValueError, match="steps must be in"):
        train(m, None, None, steps=0)
    with pytest.raises(ValueError, match="optimizer must be one of"):
        train(m, None, None, steps=1, optimizer="sgd")


def test_truncation_on_request_answers_an_overlong_document(model, tokenizer):
    answers = pie_generate(model, tokenizer, ["word " * 600], [["hotel-area"]], max_new_tokens=2,
                           truncation=True)
    assert len(answers) == 1 and len(answers[0]) == 1


def test_evaluate_scores_a_predictor_on_a_split(corpus):
    split = corpus["test"]
    gold = {d: v for d, v in zip(split["dialogue"], split["values"])}
    perfect = metrics.evaluate(lambda docs, prompts: [gold[d] for d in docs], split, batch_size=2)
    assert perfect == {"jga": 1.0, "slot_accuracy": 1.0}
    all_none = metrics.evaluate(lambda docs, prompts: [["none"] * len(p) for p in prompts], split)
    assert all_none["jga"] < 1.0 and 0.5 < all_none["slot_accuracy"] < 1.0
    with pytest.raises(ValueError, match="batch_size must be in"):
        metrics.evaluate(None, split, batch_size=0)


def test_length_buckets_group_similar_lengths_and_warm_up_from_the_shortest():
    import random
    from pidutils.batching import length_buckets, word_buckets
    lengths = list(range(1000, 0, -1))  # item i has length 1000 - i
    draw = length_buckets(lengths, batch_size=4, curriculum=100)
    rng = random.Random(0)
    first = [draw(rng) for _ in range(20)]
    assert all(len(set(b)) == 4 and max(lengths[i] for i in b) - min(lengths[i] for i in b) < 16 for b in first)
    assert max(lengths[i] for i in first[0]) <= 250  # the shortest quarter first,
    assert all(lengths[i] <= 400 for b in first for i in b)  # growing by 0.75% of the items per draw
    later = [draw(rng) for _ in range(400)][100:]
    assert max(lengths[i] for b in later for i in b) > 900  # after the warm-up, every length
    with pytest.raises(ValueError, match="curriculum must be in"):
        length_buckets(lengths, batch_size=4, curriculum=-1)
    with pytest.raises(TypeError):  # the knobs are keyword-only
        length_buckets(lengths, 4)
    # word_buckets is length_buckets over the texts' lengths in words: the same draws from the same seed
    texts = ["w " * n for n in lengths]
    assert [word_buckets(texts, batch_size=4, curriculum=100)(random.Random(1)) for _ in range(3)] == \
        [length_buckets(lengths, batch_size=4, curriculum=100)(random.Random(1)) for _ in range(3)]


def test_pie_batches_ask_a_set_slot_every_fourth_pair_and_uniform_slots_otherwise(tokenizer, corpus):
    import random
    from pidutils.pie import SET_SLOT_EVERY, pie_batches
    next_batch, rng = pie_batches(corpus["train"], tokenizer, batch_size=8), random.Random(0)
    answers = []
    for _ in range(100):
        labels = next_batch(rng)["labels"]
        labels[labels == -100] = tokenizer.pad_token_id
        answers.append(tokenizer.batch_decode(labels, skip_special_tokens=True))
    assert all(a[k] != "none" for a in answers for k in range(0, 8, SET_SLOT_EVERY))
    others = [a[k] != "none" for a in answers for k in range(8) if k % SET_SLOT_EVERY]
    data_share = sum(v != "none" for vs in corpus["train"]["values"] for v in vs) / sum(map(len, corpus["train"]["values"]))
    assert abs(sum(others) / len(others) - data_share) < 0.05  # the other slots at the data's rate
