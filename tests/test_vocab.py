"""Token classes and the tokenizer compatibility check."""

import pytest
import torch

from baco.errors import TokenizerMismatchError
from baco.testing import CORPUS, train_sentencepiece_tokenizer, train_tokenizer
from baco.vocab import (TokenTable, check_compatible, control_token_ids, ends_word, is_punct_or_format, is_word_char,
                        token_texts)


@pytest.mark.parametrize("text, expected", [
    (".", True), (",", True), ("\n", True), ("\n\n", True), (" -", True), ("1.", True), (" *", True),
    ("**", True), (" the", False), ("cat", False), ("", False), ("3", False), (" ", True),
])
def test_punctuation_and_formatting(text, expected):
    assert is_punct_or_format(text) is expected


def test_token_table_word_classes():
    table = TokenTable.from_texts(["<bos>", " The", "ing", " dragon", ".", "\ufffd", "<eot>"],
                                  control_ids=[0], stop_ids=[6])
    assert table.is_function_word.tolist() == [False, True, False, False, False, False, False]
    assert table.continues_word.tolist() == [False, False, True, False, False, True, False]
    assert table.allowed.tolist() == [False, True, True, True, True, True, True]
    assert table.is_punct[6] and table.stop_ids == {6}


def test_identical_tokenizers_are_compatible():
    tok = train_tokenizer()
    assert check_compatible(tok, tok) == len(tok)


def test_mismatched_tokenizers_name_the_first_differing_ids():
    a = train_tokenizer()
    b = train_tokenizer(corpus="something else entirely, in another order\n" * 3)
    with pytest.raises(TokenizerMismatchError, match=r"disagree on \d+ of \d+ token ids \(first: id \d+"):
        check_compatible(a, b)


def test_extra_tokens_at_the_end_are_tolerated():
    a = train_tokenizer()
    b = train_tokenizer()
    b.add_special_tokens({"additional_special_tokens": ["<|extra_chat_token|>"]})
    assert check_compatible(a, b) == len(a)


def llama2_style_tokenizer():
    """A SentencePiece-style BPE whose decoder strips the text's first space, as Llama-2's and Mistral v0.1's
    do (`Strip(" ", 1, 0)` after the `▁` -> " " replacement): "▁the" decoded alone reads "the"."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tokenizer = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tokenizer.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tokenizer.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    tokenizer.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                           decoders.Strip(" ", 1, 0)])
    tokenizer.train_from_iterator(CORPUS.splitlines(), trainer=trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def test_token_texts_keep_the_space_a_first_space_stripping_decoder_drops_from_a_token_alone():
    """Decoded alone, Llama-2-style tokens lose their leading space, which made every word read as the middle
    of the one before (the word rule, FC's function words and stop strings read these texts)."""
    tok = llama2_style_tokenizer()
    ids = tok("Tell me the story", add_special_tokens=False)["input_ids"]
    assert tok.decode([ids[2]]) == tok.decode([ids[2]]).lstrip(), "the decoder should strip a token's space"
    texts = token_texts(tok)
    assert "".join(texts[i] for i in ids) == " Tell me the story"  # the first "▁" is written too
    table = TokenTable.from_texts(texts)
    the = tok.convert_tokens_to_ids("▁the")
    assert the in ids and texts[the] == " the" and table.is_function_word[the] and not table.continues_word[the]


@pytest.mark.parametrize("make", [train_tokenizer, train_sentencepiece_tokenizer])
def test_token_texts_are_the_tokens_decoded_alone_where_that_keeps_every_space(make):
    """Byte-level BPE (GPT-2, Llama-3, SmolLM) and Gemma-style SentencePiece keep spaces token by token."""
    tok = make()
    assert token_texts(tok) == tok.batch_decode([[i] for i in range(len(tok))], skip_special_tokens=False)


def test_added_tokens_shaped_as_control_tokens_are_never_sampled_even_when_not_marked_special():
    """Qwen2.5 adds <|fim_prefix|>, <|repo_name|> ... with special=False (a tiny model wrote <|fim_suffix|> into a
    chat answer); Gemma <start_of_image>. Tool-call tags stay: an answer may write them."""
    tok = train_tokenizer()
    tok.add_tokens(["<|fim_prefix|>", "<|box_start|>", "<start_of_image>", "<tool_call>", "</tool_call>"],
                   special_tokens=False)
    named = {tok.convert_ids_to_tokens(i) for i in control_token_ids(tok) - set(tok.all_special_ids)}
    assert named == {"<|fim_prefix|>", "<|box_start|>", "<start_of_image>"}


def test_a_tokenizer_source_named_twice_is_read_once(tiny_dirs):
    """The embedded aligned model (base + LoRA adapter) reads its base's tokenizer: one object, not two loads."""
    from baco.models.hf import load_tokenizers

    base, aligned = tiny_dirs[0], tiny_dirs[1]
    one, again, other, none = load_tokenizers(base, base, aligned, None)
    assert one is again and other is not one and none is None
    assert check_compatible(one, again) == len(one) == check_compatible(one, other)


def test_a_token_that_starts_with_a_combining_mark_continues_the_word():
    """Devanagari's vowel signs and virama, and an accent written as its own character, belong to the word before
    them: another writer may not start its turn with one (the word rule), and a word ending in one is still a word."""
    table = TokenTable.from_texts(["नम", "स्", "ते", "\u0301", " noir", "日本"], control_ids=[], stop_ids=[])
    assert table.continues_word.tolist() == [True, True, True, True, False, False]
    assert table.ends_word_char.tolist() == [True, True, True, True, True, False]


def test_variation_selectors_and_the_zero_width_joiner_take_the_class_of_the_character_they_modify():
    """VARIATION SELECTOR-16 is a combining mark, so "❤\ufe0f" + "you" read as one word (the word rule kept the
    emoji's writer on for "you"). The selectors (U+FE00..FE0F, U+E0100..E01EF) and ZERO WIDTH JOINER modify the
    character before them: an emoji sequence is no word, a letter with a selector still is."""
    for modifier in ("\ufe0f", "\ufe0e", "\ufe00", "\U000e0100", "\U000e01ef", "\u200d"):
        assert not is_word_char(modifier)
        assert not ends_word("I \u2764" + modifier) and ends_word("caf" + modifier) and not ends_word(modifier)
    assert not ends_word("\U0001f468\u200d\U0001f469\u200d\U0001f467")  # a family: one emoji of three, two joiners
    assert not ends_word("\u845b\U000e0100")  # a CJK ideograph's variant is a word of its own, as the ideograph
    assert ends_word("\u0915\u094d\u200d")  # a Devanagari conjunct's half form (letter, virama, joiner) is a word
    assert ends_word("\u0645\u06cc\u200c")  # Persian "می" + ZERO WIDTH NON-JOINER: the word "می‌خواهم" goes on
    texts = ["\u2764\ufe0f", "a\ufe0f", "\ufe0f", "\u200d\U0001f469", "you", "\U0001f468\u200d",
             "\u845b\U000e0100"]
    table = TokenTable.from_texts(texts, control_ids=[], stop_ids=[])
    assert table.ends_word_char.tolist() == [False, True, False, False, True, False, False]
    # a token that starts with a modifier continues the character before it: after a letter, its word
    assert table.continues_word.tolist() == [False, True, True, True, True, False, False]
    after = lambda text: table.mid_word(torch.tensor([texts.index(text)]))  # noqa: E731
    assert not after("\u2764\ufe0f") and after("a\ufe0f")  # "you" after the heart starts a word, after "a️" not
