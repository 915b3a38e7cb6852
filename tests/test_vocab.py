"""Token classes and the tokenizer compatibility check."""

import pytest

from baco.errors import TokenizerMismatchError
from baco.testing import train_tokenizer
from baco.vocab import TokenTable, check_compatible, is_punct_or_format


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
