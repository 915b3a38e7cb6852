"""Per-token text pieces: linear-time pieces equal the exact prefix-decode pieces and join to the decoded text."""

import random

import pytest

from baco.decode.records import PIECE_CONTEXT, _windowed_pieces, piece_texts, prefix_pieces

TEXT = ("Once upon a time, naïve café owners sold crêpes — 日本語のテキスト, emoji 🙂🐉 and “quotes”.\n"
        "- a list item\n- another one: 42 × 7 = 294; αβγ δ. ") * 6


def check(tokenizer, ids, stop_ids):
    kept = [t for t in ids if t not in stop_ids]
    pieces = piece_texts(ids, tokenizer, stop_ids, [""] * len(ids))
    assert pieces == prefix_pieces(ids, tokenizer, stop_ids, [""] * len(ids))
    assert len(pieces) == len(ids) and all(p == "" for p, t in zip(pieces, ids) if t in stop_ids)
    return pieces, tokenizer.decode(kept, skip_special_tokens=True)


def test_long_multilingual_text_takes_the_linear_path_and_matches_the_exact_pieces(tiny_dirs):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) > 20 * PIECE_CONTEXT
    stops = frozenset({tokenizer.eos_token_id})
    ids = ids[:150] + [tokenizer.eos_token_id] + ids[150:]  # a stop token in the middle adds ""
    pieces, decoded = check(tokenizer, ids, stops)
    assert "".join(_windowed_pieces(ids, tokenizer, stops)) == "".join(pieces) == decoded


def test_random_byte_soup_still_gives_the_exact_pieces(tiny_dirs):
    """Random byte-level tokens make broken UTF-8 everywhere: whichever path is taken, the pieces are exact."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    special = set(tokenizer.all_special_ids)
    ordinary = [i for i in range(len(tokenizer)) if i not in special]
    stops = frozenset({tokenizer.eos_token_id})
    rng = random.Random(0)
    for _ in range(20):
        ids = [rng.choice(ordinary) for _ in range(rng.randint(1, 60))]
        if rng.random() < 0.5:
            ids.insert(rng.randrange(len(ids) + 1), tokenizer.eos_token_id)
        check(tokenizer, ids, stops)


@pytest.mark.slow
def test_the_gemma_tokenizer_pieces_are_exact_on_long_text(gemma):
    tokenizer = gemma.tokenizer  # the embedded Gemma's: SentencePiece-style "▁" spaces, byte fallback
    ids = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    pieces, decoded = check(tokenizer, ids, frozenset({tokenizer.eos_token_id}))
    assert "".join(pieces) == decoded


def test_pieces_keep_the_first_space_a_first_space_stripping_decoder_drops():
    """The continuation follows the prompt ("Answer:"), so its first token "▁the" adds " the", as the token's
    vocabulary text says (Llama-2-style `Strip` decoders drop it from a text decoded on its own)."""
    from test_vocab import llama2_style_tokenizer

    from baco.vocab import token_texts

    tokenizer = llama2_style_tokenizer()
    ids = tokenizer("the story of the dragon", add_special_tokens=False)["input_ids"]
    pieces = piece_texts(ids, tokenizer, frozenset(), [""] * len(ids))
    assert pieces[0] == " the" == token_texts(tokenizer)[ids[0]]
    assert "".join(pieces) == " the story of the dragon"
    assert prefix_pieces(ids, tokenizer, frozenset(), [""] * len(ids)) == pieces
