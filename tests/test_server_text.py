"""ChoiceText: what a stream may show as tokens arrive (stop strings held back, cut, leading space removed)."""

from transformers import AutoTokenizer

from baco.decode.records import PieceDecoder, final_text, held
from baco.decode.choice import ChoiceText, Token


def feed(tokenizer, text, stops, *, extra_ids=(), min_tokens=0):
    """Stream `text` token by token; return what was released after each token, and the ChoiceText."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + list(extra_ids)
    stop_ids = frozenset({tokenizer.eos_token_id})
    choice = ChoiceText(tokenizer, stop_ids, stops, min_tokens)
    shown = []
    for k, token_id in enumerate(ids):
        last = k + 1 == len(ids)
        stopped = choice.add(Token(token_id, "", "base", "r", 0.5, -1.0), last=last)
        shown.append("".join(t.text for t in choice.release(final=last or stopped)))
        if stopped:
            break
    return ids, shown, choice


def test_text_that_may_begin_a_stop_string_is_held_back_until_it_cannot(tiny_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    ids, shown, choice = feed(tokenizer, " An apple.\nQuest for more", ("\nQuestion:",))
    assert "".join(shown) == choice.content == "An apple.\nQuest for more"
    held = [i for i, piece in enumerate(shown) if "\n" in piece]
    assert held and "Quest" in shown[held[0]]  # "\n" and "Quest" came out together, once they could not be a stop
    assert choice.content == final_text(ids, tokenizer, ("\nQuestion:",), frozenset({tokenizer.eos_token_id}))


def test_a_stop_string_cuts_the_text_and_later_tokens_add_nothing(tiny_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    ids, shown, choice = feed(tokenizer, "  A pear.\nQuestion: and more", ("\nQuestion:",))
    assert choice.content == "A pear." == final_text(ids, tokenizer, ("\nQuestion:",), frozenset())
    assert len(choice.tokens) < len(ids)  # it stopped at the stop string
    assert "".join(t.text for t in choice.tokens) == choice.content


def test_multibyte_characters_arrive_whole_and_a_stop_token_adds_nothing(tiny_dirs):
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    text = "Café 日本語 🙂🐉 done"
    ids, shown, choice = feed(tokenizer, text, (), extra_ids=[tokenizer.eos_token_id])
    assert all("\ufffd" not in piece for piece in shown)
    assert "".join(shown) == choice.content == text
    assert choice.tokens[-1].text == ""


def test_a_stop_string_with_a_leading_space_is_cut_where_the_continuation_begins_with_it():
    """Llama-2-style decoders (Strip of the first space) drop the space of the continuation's first token
    ("Answer:" + "▁the" decodes "the"), which the engine, reading token texts, finds the stop string " the" in:
    the text and the stream must cut it too, not show "the story"."""
    from test_vocab import llama2_style_tokenizer

    tokenizer = llama2_style_tokenizer()
    ids, shown, choice = feed(tokenizer, "the story", (" the",))
    assert tokenizer.convert_ids_to_tokens(ids[0]) == "▁the"
    assert choice.content == "" == final_text(ids, tokenizer, (" the",), frozenset())
    assert final_text(ids, tokenizer, (" st",), frozenset()) == "the"


def test_with_min_tokens_a_stop_string_inside_their_text_stays_and_one_ending_past_them_cuts(tiny_dirs):
    """vLLM's min_tokens: the first "\nQuestion:" ends with the k-th token. Held to k tokens it stays in the text and
    the second one cuts; held to k - 1 the first one ends past them and cuts, and nothing of it was ever shown."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_dirs[0])
    text, stop = " A pear.\nQuestion: and more\nQuestion: again", "\nQuestion:"
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    decoder = PieceDecoder(tokenizer, frozenset())
    pieces = [decoder.add(token, last=k + 1 == len(ids)) for k, token in enumerate(ids)]
    k = next(n for n in range(1, len(ids) + 1) if stop in "".join(pieces[:n]))
    for min_tokens, content in ((k, "A pear.\nQuestion: and more"), (k - 1, "A pear.")):
        _, shown, choice = feed(tokenizer, text, (stop,), min_tokens=min_tokens)
        assert "".join(shown) == choice.content == content
        assert content == final_text(ids, tokenizer, (stop,), frozenset(), held(pieces, min_tokens))
