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


def test_all_checkpoints_together_stay_under_25_mb():
    size = sum(f.stat().st_size for f in zoo.CHECKPOINTS.rglob("*") if f.is_file())
    assert size < 25 * 2**20


def test_shipped_pid_model_matches_the_copy_reference():
    model, tokenizer = zoo.load("pid-t5-tiny")
    split = zoo.test_split("pid-t5-tiny")
    docs = list(split["dialogue"][:2])
    prompts = [split[0]["slots"], split[1]["slots"][:7]]
    ids, logits = pid.pid_generate_ids(model, tokenizer, docs, prompts, return_scores=True)
    ref, ref_logits = pid.pid_reference(model, tokenizer, docs, prompts)
    assert torch.equal(ids, ref[:, :ids.shape[1]])
    torch.testing.assert_close(logits, ref_logits[:, :ids.shape[1]], rtol=1e-5, atol=1e-5)


def test_shipped_pid_model_meets_the_jga_target_on_the_test_split():
    """The report's figure; chapter 3 re-evaluates the whole test split and asserts the same."""
    assert zoo.train_report("pid-t5-tiny")["test"]["jga"] >= 0.90
