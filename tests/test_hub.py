"""Hub checkpoints (issue 18, item 3), offline: random models at t5-small's configuration, whose
embedding table has 32,128 rows, with a tokenizer of exactly 32,100 tokens as every hub T5 has,
through every public decoder; and Hugging Face's ``generate`` on a decoder deeper than its encoder."""
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from pidutils import pid, sequential, t5, zoo
from pidutils import pipelined as pl
from pidutils import speculative as sp
from pidutils.models import SHAPES, random_t5
from pidutils.tokenizer import check_vocab

HUB_TOKENS = 32_100  # len(AutoTokenizer.from_pretrained("google-t5/t5-small"))
EXTRA_IDS = 100  # T5's sentinels <extra_id_0> .. <extra_id_99>, the last ids


def hub_like_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer with T5's special ids (pad 0, eos 1, unk 2), sentinels and size."""
    words = ["<pad>", "</s>", "<unk>"] + [f"w{i}" for i in range(HUB_TOKENS - 3 - EXTRA_IDS)]
    sentinels = [f"<extra_id_{i}>" for i in range(EXTRA_IDS)]
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words + sentinels[::-1])}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>",
                                   additional_special_tokens=sentinels, model_max_length=512)


@pytest.fixture(scope="module")
def hub():
    """t5-small's widths and vocab_size, one encoder and one decoder layer (for speed); a draft of
    the same shape with other weights."""
    tokenizer = hub_like_tokenizer()
    target, draft = (random_t5("t5-small", seed=seed, num_layers=1) for seed in (0, 1))
    documents = [" ".join(f"w{(37 * i + 11 * d) % 31000}" for i in range(12 + 5 * d)) for d in range(3)]
    return target, draft, tokenizer, documents


def test_the_tokenizer_and_models_are_a_hub_t5s():
    tokenizer = hub_like_tokenizer()
    assert len(tokenizer) == HUB_TOKENS and SHAPES["t5-small"]["vocab_size"] == 32_128
    assert (tokenizer.pad_token_id, tokenizer.eos_token_id, tokenizer.unk_token_id) == (0, 1, 2)
    assert tokenizer.convert_tokens_to_ids("<extra_id_0>") == HUB_TOKENS - 1


def test_a_tokenizer_longer_than_the_table_is_refused():
    with pytest.raises(ValueError, match="tokenizer must fit the model's vocabulary: the tokenizer has 32100"):
        check_vocab(hub_like_tokenizer(), random_t5("t5-tiny", vocab_size=32_000, num_layers=1))


def hugging_face_greedy(model, tokenizer, documents, max_new_tokens):
    enc = tokenizer(documents, padding=True, return_tensors="pt")
    with torch.inference_mode():
        out = model.generate(**enc, max_new_tokens=max_new_tokens, do_sample=False, num_beams=1)
    return out[:, 1:]  # without the start token


@pytest.mark.parametrize("rows", [1, 3])
def test_pid_decodes_with_a_hub_tokenizer(hub, rows):
    target, _, tokenizer, documents = hub
    prompts = [["w1 w2", "w3"], ["w4"], ["w5 w6 w7", "w8", "w9"]][:rows]
    ids, scores = pid.pid_generate_ids(target, tokenizer, documents[:rows], prompts, max_new_tokens=4,
                                       return_scores=True)
    ref, ref_scores = pid.pid_reference(target, tokenizer, documents[:rows], prompts, max_new_tokens=4)
    assert torch.equal(ids, ref[:, :ids.shape[1]])
    assert (scores - ref_scores[:, :ids.shape[1]]).abs().max() <= 1e-5 * ref_scores.abs().max()
    answers = pid.pid_generate(target, tokenizer, documents[:rows], prompts, max_new_tokens=4)
    assert answers == pid.split_answers(tokenizer, ref, prompts)


@pytest.mark.parametrize("rows", [1, 3])
def test_sequential_decoding_is_hugging_faces_with_a_hub_tokenizer(hub, rows):
    target, _, tokenizer, documents = hub
    ours = sequential.sequential_generate_ids(target, tokenizer, documents[:rows], max_new_tokens=6)
    expected = hugging_face_greedy(target, tokenizer, documents[:rows], 6)
    assert torch.equal(ours, expected)
    assert sequential.sequential_generate(target, tokenizer, documents[:rows], max_new_tokens=6) == \
        sequential.sequential_states(tokenizer, expected)


@pytest.mark.parametrize("rows", [1, 3])
def test_pipelined_decoding_equals_its_uncached_reference_with_a_hub_tokenizer(hub, rows):
    target, _, tokenizer, documents = hub
    knobs = dict(delta_t=2, time_max=6, sub_max=3)
    cached = pl.pipelined_generate_ids(target, tokenizer, documents[:rows], **knobs)
    uncached = pl.pipelined_generate_ids(target, tokenizer, documents[:rows], **knobs, cached=False)
    assert [s.subsequences for s in cached] == [s.subsequences for s in uncached]
    assert sum(s.steps for s in cached) >= 6
    assert pl.pipelined_generate(target, tokenizer, documents[:rows], **knobs) == pl.schedule_states(tokenizer, cached)


@pytest.mark.parametrize("rows", [1, 3])
def test_speculative_decoding_is_the_targets_with_a_hub_tokenizer(hub, rows):
    target, draft, tokenizer, documents = hub
    ours, stats = sp.speculative_generate_ids(target, draft, tokenizer, documents[:rows], gamma=3, max_new_tokens=6)
    expected = hugging_face_greedy(target, tokenizer, documents[:rows], 6)
    assert torch.equal(ours, t5.trim(expected, tokenizer.pad_token_id))
    assert stats.rounds and sp.speculative_generate(target, draft, tokenizer, documents[:rows], gamma=3,
                                                    max_new_tokens=6) == \
        tokenizer.batch_decode(expected, skip_special_tokens=True)


# --- generate on a decoder deeper than its encoder ------------------------------------------------

@pytest.fixture(scope="module")
def deep():
    model, tokenizer = zoo.load("seq-t5-deep")
    assert model.config.num_decoder_layers > model.config.num_layers
    documents = list(zoo.test_split("seq-t5-deep")["dialogue"][:2])
    return model, tokenizer, tokenizer(documents, padding=True, return_tensors="pt")


def test_plain_generate_fails_on_a_deeper_decoder(deep):
    model, _, enc = deep
    with torch.inference_mode(), pytest.raises(IndexError):
        model.generate(**enc, max_new_tokens=4, do_sample=False)


def test_zoo_generate_works_on_a_deeper_decoder(deep):
    model, tokenizer, enc = deep
    with torch.inference_mode():
        out = zoo.generate(model, **enc, max_new_tokens=8, do_sample=False)
    memory = t5.encoded_memory(model, enc["input_ids"], enc["attention_mask"])
    assert model.config.num_layers < model.config.num_decoder_layers  # restored after the call
    ours = sequential.sequential_decode(model, memory, pad=tokenizer.pad_token_id, max_new_tokens=8)
    assert torch.equal(out[:, 1:], ours)
