"""Documents and prompts of the wrong type are a ValueError naming the parameter, before any work.

``documents`` is a list of strings; ``prompts`` a list of lists of strings, one list per document.
A flat list of prompts used to be read as one prompt per *character*.
"""
import pytest
import torch

from pidutils import data, multiprompt, pid
from pidutils.pie import pie_generate

FLAT = (["a dialogue"], ["hotel-area"], r"prompts\[0\] must be a list of strings .*\[\['hotel-area'\]\]")
BAD_INPUTS = [
    FLAT,
    (None, [["hotel-area"]], "documents must be a list of strings, one per document; got None"),
    ("a dialogue", [["hotel-area"]], "documents must be a list of strings, one per document; got 'a dialogue'"),
    ([None], [["hotel-area"]], r"documents\[0\] must be a string, got None"),
    ([3], [["hotel-area"]], r"documents\[0\] must be a string, got an object of type int"),
    (["a dialogue"], "hotel-area", "prompts must be a list of prompt lists.*got 'hotel-area'"),
    (["a dialogue"], None, "prompts must be a list of prompt lists.*got None"),
    (["a dialogue"], [[None]], r"prompts\[0\]\[0\] must be a string, got None"),
    (["a dialogue"], [[["hotel-area"]]], r"prompts\[0\]\[0\] must be a string, got an object of type list"),
]


@pytest.mark.parametrize("documents, prompts, match", BAD_INPUTS)
@pytest.mark.parametrize("method", ["pie", "pid-shared", "pid-copy", "pid-reference"])
def test_generators_refuse_bad_types(model, tokenizer, method, documents, prompts, match):
    run = {"pie": lambda: pie_generate(model, tokenizer, documents, prompts),
           "pid-shared": lambda: pid.pid_generate(model, tokenizer, documents, prompts),
           "pid-copy": lambda: pid.pid_generate(model, tokenizer, documents, prompts, cross="copy"),
           "pid-reference": lambda: pid.pid_reference(model, tokenizer, documents, prompts)}[method]
    with pytest.raises(ValueError, match=match):
        run()


@pytest.mark.parametrize("documents, prompts, match", BAD_INPUTS)
def test_measurement_helpers_refuse_bad_types(model, tokenizer, documents, prompts, match):
    with pytest.raises(ValueError, match=match):
        multiprompt.answer_fn("PID-shared", model, tokenizer, documents, prompts)
    with pytest.raises(ValueError, match=match):
        multiprompt.encoder_tokens("PIE", tokenizer, documents, prompts)
    with pytest.raises(ValueError, match=match):
        multiprompt.shape_of(tokenizer, documents, prompts, [["none"]])


def test_prompt_helpers_refuse_bad_types(model, tokenizer):
    with pytest.raises(ValueError, match=FLAT[2]):
        pid.decoder_prefixes(model, tokenizer, FLAT[1])
    with pytest.raises(ValueError, match=FLAT[2]):
        pid.split_answers(tokenizer, torch.zeros((1, 2), dtype=torch.long), FLAT[1])
    with pytest.raises(ValueError, match="prompt must be a string, got an object of type list"):
        pid.prompt_ids(tokenizer, ["hotel-area"])
    with pytest.raises(ValueError, match="document must be a string, got None"):
        data.pie_source("hotel-area", None)
    with pytest.raises(ValueError, match="prompt must not be empty"):
        data.pie_source("  ", "a dialogue")


def test_good_input_still_answers(model, tokenizer):
    answers = pid.pid_generate(model, tokenizer, ("a dialogue",), (("hotel-area", "taxi-day"),), max_new_tokens=2)
    assert len(answers) == 1 and len(answers[0]) == 2
