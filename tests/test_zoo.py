"""The shipped checkpoints: plain Hugging Face format, small, and what the chapters rely on."""
import pytest
import torch
from transformers import PreTrainedTokenizerFast, T5ForConditionalGeneration

from pidutils import pid, zoo
from pidutils.tokenizer import check_vocab


@pytest.mark.parametrize("name", sorted(zoo.RECIPES))
def test_checkpoint_loads_with_plain_from_pretrained(name):
    model = T5ForConditionalGeneration.from_pretrained(zoo.path(name))
    tokenizer = PreTrainedTokenizerFast.from_pretrained(zoo.path(name))
    check_vocab(tokenizer, model)
    report = zoo.train_report(name)
    assert report["recipe"] == zoo.recipe_dict(name)
    assert {"steps", "wall_seconds", "train_flops", "machine", "validation", "test"} <= set(report)


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
def test_shipped_models_meet_the_jga_target_on_the_test_split(name):
    """The reports' figures; chapter 3 re-evaluates PID on the whole test split and asserts the same."""
    assert zoo.train_report(name)["test"]["jga"] >= 0.90


def test_the_pipelined_model_is_within_two_points_of_the_sequential_one():
    assert zoo.train_report("pipe-t5-tiny")["test"]["jga"] >= zoo.train_report("seq-t5-tiny")["test"]["jga"] - 0.02


@pytest.mark.parametrize("draft", ["seq-t5-tiny", "seq-t5-mini"])
def test_the_speculative_target_costs_at_least_four_draft_steps(draft):
    """The figures ``python -m pidutils.zoo cost`` measured on the 2-core CPU and recorded in the report."""
    record = zoo.train_report("seq-t5-deep")["cost_ratios"][draft]
    assert record["draft"] == draft and record["c"] <= 0.25
    # the weak draft's greedy α is in the range the issue asks for; the trained draft agrees almost always
    assert 0.55 <= record["alpha_greedy"] <= 0.85 if draft in zoo.WEAK_DRAFTS else record["alpha_greedy"] > 0.95
    assert record["target_step_ms"] / record["draft_step_ms"] == pytest.approx(1 / record["c"])
    assert "2 threads" in record["machine"]


def test_shipped_pipelined_model_cached_equals_uncached():
    from pidutils import pipelined as pl
    model, tokenizer = zoo.load("pipe-t5-tiny")
    documents = list(zoo.test_split("pipe-t5-tiny")["dialogue"][:3])
    memory = pl.document_memory(model, tokenizer, documents)
    runs = {}
    for name, step in (("cached", pl.cached_step(model, memory, 3, 1000)), ("uncached", pl.uncached_step(model, memory))):
        logits = []
        with torch.inference_mode():
            runs[name] = pl.algorithm1(pl.recording(step, logits), 3, 1, 50, 20, 0, 1, tokenizer.pad_token_id), logits
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
