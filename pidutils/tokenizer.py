"""One subword tokenizer for the book's tiny models (chapter 2).

A BPE tokenizer trained with the `tokenizers` library on the training dialogues, wrapped as a
``PreTrainedTokenizerFast`` with T5's conventions: ``<pad>`` = 0 (also the decoder start token),
``</s>`` = 1 appended to every sequence, ``<unk>`` = 2. It is saved with every checkpoint.
"""
from __future__ import annotations

from collections.abc import Iterable

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from .checks import check_int

SPECIAL_TOKENS = ["<pad>", "</s>", "<unk>"]
MAX_LENGTH = 512


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1000) -> PreTrainedTokenizerFast:
    """Train a byte-pair-encoding tokenizer on ``texts`` and wrap it for ``transformers``."""
    check_int("vocab_size", vocab_size, len(SPECIAL_TOKENS) + 1)
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.Sequence([normalizers.Lowercase(), normalizers.Strip()])
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                                       show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", pair="$A $B </s>",
                                                       special_tokens=[("</s>", tok.token_to_id("</s>"))])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>",
                                   unk_token="<unk>", model_max_length=MAX_LENGTH)


def check_vocab(tokenizer: PreTrainedTokenizerFast, model) -> None:
    """Raise ``ValueError`` unless every token id of ``tokenizer`` fits ``model``'s embedding table.

    The table may be longer than the tokenizer: every hub T5 has 32,100 tokens and ``vocab_size``
    32,128 (padded to a multiple of 128), and the extra rows are never produced by the tokenizer.
    """
    if len(tokenizer) > model.config.vocab_size:
        raise ValueError(f"tokenizer must fit the model's vocabulary: the tokenizer has {len(tokenizer)} "
                         f"tokens, more than the model's vocab_size of {model.config.vocab_size}")
