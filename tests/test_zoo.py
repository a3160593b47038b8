"""The shipped checkpoints: plain Hugging Face format, small, and what the chapters rely on.

The training reports' figures are re-derived here from code on the shipped checkpoints, not read
back: the test JGA and slot accuracy by the recipe's own predictor on the test split (every test
dialogue for the sequential and pipelined models, whose figures must then be the reports' exactly;
the first few for the others, whose errors can be no more than the whole split's), the training FLOPs by
replaying a recipe's batches, the shape and parameter count from the recipe, and chapter 5's c and
α by measuring them again.

Not re-derived, because that would take minutes or cannot be repeated: the training FLOPs of the
recipes of thousands of steps (only ``seq-t5-mini``'s 60 steps are replayed), the wall seconds and
validation curves of training, and the machine a cost ratio was recorded on (the record's
"2 threads") with the milliseconds it measured there; c is measured again on this machine instead.
"""
import dataclasses
import json
import random

import pytest
import torch
from transformers import LlamaForCausalLM, PreTrainedTokenizerFast, T5ForConditionalGeneration

from pidutils import compression, drafts, measure, metrics, pid, shared_prefix, t5, zoo
from pidutils.bench import compare
from pidutils.cost import training_flops
from pidutils.data import make_split
from pidutils.models import count_parameters, weights_per_decode_step
from pidutils.sequential import sequential_decode
from pidutils.tokenizer import check_vocab
from pidutils.zoo.training import decoder_tokens, predictor, training_batches

TEST_DIALOGUES = 200  # the reports' test split
# Test dialogues re-evaluated per checkpoint: all of them where that takes seconds, else a few.
EVALUATED = {"seq-t5-tiny": 200, "pipe-t5-tiny": 200, "pid-t5-tiny": 40, "pie-t5-tiny": 4, "seq-t5-deep": 16}
SHAPE = ("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "num_decoder_layers")


@pytest.fixture(scope="module")
def evaluated():
    """Each checkpoint's JGA and slot accuracy by its recipe's predictor, on its first test dialogues."""
    scores = {}
    for name, n in EVALUATED.items():
        model, tokenizer = zoo.load(name)
        split = zoo.test_split(name).select(range(n))
        scores[name] = metrics.evaluate(predictor(zoo.RECIPES[name].method, model, tokenizer), split)
    return scores


@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_checkpoint_loads_with_plain_from_pretrained(name):
    model = T5ForConditionalGeneration.from_pretrained(zoo.path(name))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(zoo.path(name))
    check_vocab(tokenizer, model)
    report = zoo.train_report(name)
    assert report["recipe"] == zoo.recipe_dict(name)
    assert {"steps", "wall_seconds", "train_flops", "machine", "validation", "test"} <= set(report)
    # the checkpoint is the recipe's shape, with as many weights as a fresh model of that shape
    recipe = zoo.RECIPES[name]
    assert {k: getattr(model.config, k) for k in SHAPE} == {k: getattr(recipe, k) for k in SHAPE}
    assert count_parameters(model) == count_parameters(zoo.new_model(recipe, model.config.vocab_size))
    assert report["steps"] == recipe.steps


CAUSAL_SHAPE = {"hidden_size": "hidden_size", "intermediate_size": "intermediate_size",
                "num_hidden_layers": "num_layers", "num_attention_heads": "num_heads",
                "num_key_value_heads": "num_kv_heads", "max_position_embeddings": "max_positions"}


@pytest.mark.parametrize("name", sorted(zoo.CAUSAL_RECIPES))
def test_decoder_only_checkpoint_loads_with_plain_from_pretrained(name):
    """Chapter 7's models: plain Llama checkpoints of their recipe's shape, with their reports."""
    model = LlamaForCausalLM.from_pretrained(zoo.path(name))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(zoo.path(name))
    check_vocab(tokenizer, model)
    recipe, report = zoo.CAUSAL_RECIPES[name], zoo.train_report(name)
    assert report["recipe"] == zoo.recipe_dict(name)
    assert {"steps", "wall_seconds", "train_flops", "machine", "validation", "test"} <= set(report)
    assert {k: getattr(model.config, k) for k in CAUSAL_SHAPE} == {k: getattr(recipe, v)
                                                                   for k, v in CAUSAL_SHAPE.items()}
    assert count_parameters(model) == count_parameters(zoo.new_causal_model(recipe, model.config.vocab_size))
    assert report["steps"] == recipe.steps


def test_the_decoder_only_model_meets_the_jga_target_on_the_test_split():
    """prefix-llama-tiny, answered the shared-prefix way on its first 40 test dialogues: JGA at least
    0.90, and no more wrong dialogues or slots than its report counts on the whole split (chapter 7
    re-evaluates all 200)."""
    name, n = "prefix-llama-tiny", 40
    model, tokenizer = zoo.load(name)
    split = zoo.test_split(name).select(range(n))
    score = metrics.evaluate(
        lambda docs, prompts: shared_prefix.shared_prefix_generate(model, tokenizer, docs, prompts[0]), split)
    report, slots = zoo.train_report(name)["test"], len(split[0]["slots"])
    assert score["jga"] >= 0.90
    assert report["jga"] >= 0.90
    assert round((1 - score["jga"]) * n) <= round((1 - report["jga"]) * TEST_DIALOGUES)
    wrong_slots = round((1 - report["slot_accuracy"]) * TEST_DIALOGUES * slots)
    assert round((1 - score["slot_accuracy"]) * n * slots) <= wrong_slots


# Chapter 8's compressors shipped so far (the KL one is trained next; the chapter is not in the book yet).
SHIPPED_COMPRESSORS = ("compress-ce-pid-t5-tiny",)


@pytest.mark.parametrize("name", SHIPPED_COMPRESSORS)
def test_a_compressor_loads_for_its_base_with_its_report(name):
    """Chapter 8's compressors: for pid-t5-tiny (its signature), of the recipe's shape, with the test
    JGA at every k the recipe names, and refused by another model."""
    recipe = zoo.COMPRESSOR_RECIPES[name]
    model, _ = zoo.load(recipe.base)
    compressor = compression.load_compressor(name, model)
    report = compression.compressor_report(name)
    assert report["recipe"] == json.loads(json.dumps(dataclasses.asdict(recipe)))  # as the report stores it
    assert compressor.max_k == recipe.max_k and report["steps"] == recipe.steps
    assert sorted(int(k) for k in report["test"]) == sorted(recipe.test_k)
    assert {"wall_seconds", "machine", "validation", "final_loss"} <= set(report)
    with pytest.raises(ValueError, match=f"compressor was trained for {recipe.base}"):
        compression.check_compressor(zoo.load("pie-t5-tiny")[0], compressor, 8)


def test_a_compressors_report_is_its_checkpoint_re_evaluated():
    """The cross-entropy compressor at k = 24 (13 times below the test dialogues' mean 317 tokens),
    re-evaluated on the first 40 test dialogues: no more wrong dialogues or slots than its report
    counts on all 200, where it keeps chapter 8's target, JGA >= 0.90."""
    model, tokenizer = zoo.load("pid-t5-tiny")
    compressor = compression.load_compressor("compress-ce-pid-t5-tiny", model)
    split, k, n = zoo.test_split("pid-t5-tiny").select(range(40)), 24, 40
    score = metrics.evaluate(
        lambda docs, prompts: compression.compressed_generate(model, tokenizer, compressor, docs, prompts, k=k), split)
    report = compression.compressor_report("compress-ce-pid-t5-tiny")["test"][str(k)]
    slots = len(split[0]["slots"])
    assert report["jga"] >= 0.90
    assert round((1 - score["jga"]) * n) <= round((1 - report["jga"]) * TEST_DIALOGUES)
    wrong_slots = round((1 - report["slot_accuracy"]) * TEST_DIALOGUES * slots)
    assert round((1 - score["slot_accuracy"]) * n * slots) <= wrong_slots


def test_all_checkpoints_together_stay_under_60_mb():
    size = sum(f.stat().st_size for f in zoo.CHECKPOINTS.rglob("*") if f.is_file())
    assert size < 60 * 2**20


def test_shipped_pid_model_matches_the_copy_reference():
    model, tokenizer = zoo.load("pid-t5-tiny")
    split = zoo.test_split("pid-t5-tiny")
    docs = list(split["dialogue"][:2])
    prompts = [split[0]["slots"], split[1]["slots"][:7]]
    ids, logits = pid.pid_generate_ids(model, tokenizer, docs, prompts, return_scores=True)
    ref, ref_logits = pid.pid_reference(model, tokenizer, docs, prompts)
    assert torch.equal(ids, ref[:, :ids.shape[1]])
    torch.testing.assert_close(logits, ref_logits[:, :ids.shape[1]], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", sorted(set(zoo.RECIPES) - set(zoo.WEAK_DRAFTS)))
def test_shipped_models_meet_the_jga_target_on_the_test_split(name, evaluated):
    """Re-evaluated with the recipe's predictor: on every test dialogue the report's figures exactly;
    on a sample, no more wrong dialogues or slots than the report counts on the whole split. Chapter 3
    re-evaluates PID on the whole test split too and asserts the same."""
    score, report = evaluated[name], zoo.train_report(name)["test"]
    n = EVALUATED[name]
    assert score["jga"] >= 0.90
    if n == TEST_DIALOGUES:
        assert score == pytest.approx(report, abs=1e-12)
    else:
        assert round((1 - score["jga"]) * n) <= round((1 - report["jga"]) * TEST_DIALOGUES)
        slots = len(zoo.test_split(name)[0]["slots"])
        assert round((1 - score["slot_accuracy"]) * n * slots) <= round((1 - report["slot_accuracy"]) * TEST_DIALOGUES
                                                                        * slots)


def test_the_pipelined_model_is_within_two_points_of_the_sequential_one(evaluated):
    assert EVALUATED["pipe-t5-tiny"] == EVALUATED["seq-t5-tiny"] == TEST_DIALOGUES
    assert evaluated["pipe-t5-tiny"]["jga"] >= evaluated["seq-t5-tiny"]["jga"] - 0.02


def test_the_training_flops_are_the_recipes_batches_counted():
    """``seq-t5-mini``'s 60 training steps replayed: the same batches from the same seed, each counted
    by :func:`pidutils.cost.training_flops` at the model's own parameter counts."""
    name = "seq-t5-mini"
    recipe = zoo.RECIPES[name]
    model, tokenizer = zoo.load(name)
    split = make_split("train", train=recipe.train_dialogues, seed=recipe.seed)
    next_batch, _ = training_batches(recipe, split, tokenizer, model)
    encoder = count_parameters(model.get_encoder().block)
    decoder = count_parameters(model.get_decoder().block) + model.lm_head.weight.numel()
    rng, flops = random.Random(recipe.seed), 0.0
    for _ in range(recipe.steps):
        batch = next_batch(rng)
        flops += training_flops(encoder, decoder, int(batch["attention_mask"].sum()), decoder_tokens(batch))
    assert flops == pytest.approx(zoo.train_report(name)["train_flops"], rel=1e-12)


@pytest.mark.parametrize("draft", drafts.DRAFTS)
def test_the_speculative_target_costs_at_least_four_draft_steps(draft):
    """c, a draft step over a target step, measured again on this machine (the two models interleaved,
    the fastest of five runs each, since a busy machine only ever adds time), and bounded by the
    weights each step reads (the roofline's reason for it); and the draft's greedy α on a few test
    dialogues, against the record ``python -m pidutils.zoo cost`` wrote."""
    record = zoo.train_report(drafts.TARGET)["cost_ratios"][draft]
    assert record["draft"] == draft and record["alpha_dialogues"] == drafts.ALPHA_DIALOGUES
    bed = drafts.load_speculative(dialogues=4, draft=draft)
    target, model = bed["target"], bed["draft"]
    assert weights_per_decode_step(model) <= 0.25 * weights_per_decode_step(target)
    memory = dict(zip(("target", "draft"), measure.memories(bed, ("target", "draft"), bed.documents[:1])))
    tokens = {role: sequential_decode(bed[role], memory[role], pad=bed.pad).shape[1] for role in memory}
    times = compare({role: lambda role=role: sequential_decode(bed[role], memory[role], pad=bed.pad)
                     for role in memory}, warmup=1, repeats=5)
    step = {role: min(times[role].samples) / tokens[role] for role in memory}
    assert step["draft"] / step["target"] <= 0.25
    alpha = drafts.alpha_table(bed, ngram_dialogues=1)[draft]
    # the weak draft's greedy α is in the range the issue asks for; the trained draft agrees almost always
    assert 0.55 <= alpha <= 0.85 if draft in zoo.WEAK_DRAFTS else alpha > 0.95
    assert alpha == pytest.approx(record["alpha_greedy"], abs=0.1)  # 4 of the record's 100 dialogues


def test_shipped_pipelined_model_cached_equals_uncached():
    from pidutils import pipelined as pl
    model, tokenizer = zoo.load("pipe-t5-tiny")
    documents = list(zoo.test_split("pipe-t5-tiny")["dialogue"][:3])
    memory = t5.document_memory(model, tokenizer, documents)
    runs = {}
    for name, step in (("cached", pl.cached_step(model, memory, rows=3, capacity=1000)),
                       ("uncached", pl.uncached_step(model, memory))):
        logits = []
        with torch.inference_mode():
            runs[name] = pl.algorithm1(pl.recording(step, logits), b=3, delta_t=1, time_max=50, sub_max=20, bos=0,
                                       eos=1), logits
    (cached, cached_logits), (uncached, uncached_logits) = runs["cached"], runs["uncached"]
    assert [s.subsequences for s in cached] == [s.subsequences for s in uncached]
    assert all(len(s.subsequences) >= 2 for s in cached)
    for a, b in zip(cached_logits, uncached_logits):
        assert (a - b).abs().max() <= 1e-5 * b.abs().max()


def test_a_fine_tune_starts_from_its_init_which_must_share_its_shape_and_data():
    import dataclasses
    from pidutils.zoo.training import initial_model
    recipe = dataclasses.replace(zoo.RECIPES["pid-t5-tiny"], method="pie", init="pid-t5-tiny")
    model, tokenizer = initial_model(recipe, [])
    shipped, shipped_tokenizer = zoo.load("pid-t5-tiny")
    assert tokenizer.get_vocab() == shipped_tokenizer.get_vocab()
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), shipped.state_dict().values()))
    with pytest.raises(ValueError, match="differs in d_model, train_dialogues"):
        initial_model(dataclasses.replace(recipe, d_model=64, train_dialogues=10), [])
    with pytest.raises(ValueError, match="init must be one of"):
        initial_model(dataclasses.replace(recipe, init="t5-small"), [])


def test_a_deepened_init_computes_what_its_init_did():
    import dataclasses
    from pidutils.zoo.training import initial_model
    recipe = dataclasses.replace(zoo.RECIPES["pid-t5-tiny"], method="seq", init="pid-t5-tiny", num_decoder_layers=5)
    model, tokenizer = initial_model(recipe, [])
    shipped, _ = zoo.load("pid-t5-tiny")
    assert model.config.num_decoder_layers == 5
    source = tokenizer(["i need a cheap hotel in the north"], return_tensors="pt")
    decoder_ids = torch.tensor([[0, 7, 8, 9]])
    with torch.no_grad():
        assert torch.equal(model(**source, decoder_input_ids=decoder_ids).logits,
                           shipped(**source, decoder_input_ids=decoder_ids).logits)
    added = model.get_decoder().block[2:]
    assert all(bool(block.layer[2].DenseReluDense.wi.weight.detach().abs().sum() > 0) for block in added)  # not zero
    with pytest.raises(ValueError, match="num_layers must be at most the init's 3"):
        initial_model(dataclasses.replace(recipe, num_layers=4), [])


def test_a_truncated_init_keeps_the_first_blocks_of_each_stack():
    from pidutils.zoo.training import truncated
    shipped, _ = zoo.load("seq-t5-tiny")
    short = truncated(shipped, 1, 1)
    assert (short.config.num_layers, short.config.num_decoder_layers) == (1, 1)
    kept = short.state_dict()
    for key, value in shipped.state_dict().items():
        if ".block.0." in key or ".block." not in key:
            assert torch.equal(kept[key], value), key
        else:
            assert key not in kept, key


def test_total_training_flops_count_the_init_of_a_fine_tune():
    pie, pid_ = zoo.train_report("pie-t5-tiny"), zoo.train_report("pid-t5-tiny")
    assert pie["recipe"]["init"] == "pid-t5-tiny" and pid_["recipe"]["init"] == ""
    assert zoo.total_train_flops("pid-t5-tiny") == pid_["train_flops"]
    assert zoo.total_train_flops("pie-t5-tiny") == pie["train_flops"] + pid_["train_flops"]
