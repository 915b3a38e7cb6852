"""ChoiceText: what a stream may show as tokens arrive (stop strings held back, cut, leading space removed)."""

from transformers import AutoTokenizer

from baco.decode.records import final_text
from baco.decode.choice import ChoiceText, Token


def feed(tokenizer, text, stops, *, extra_ids=()):
    """Stream `text` token by token; return what was released after each token, and the ChoiceText."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"] + list(extra_ids)
    stop_ids = frozenset({tokenizer.eos_token_id})
    choice = ChoiceText(tokenizer, stop_ids, stops)
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
