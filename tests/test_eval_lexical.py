"""Lexical diversity metrics on hand-made sets with known answers, and against reference packages."""

import gzip
import math
import random

import numpy as np
import pytest

from baco.evaluate.lexical import (compression_ratio, distinct_n, ead_distinct, homogenization, lcs_length,
                                   ngram_entropy, ngram_kernel, ngram_vendi, rouge_l, self_bleu,
                                   unique_first_sentences)
from baco.evaluate.partitions import short_answer_tokens
from baco.evaluate.tokens import first_sentence, words

IDENTICAL = ["the cat sat on the mat today"] * 4
DISJOINT = ["alpha beta gamma delta", "one two three four", "red green blue white", "north south east west"]
WORDS = "apple river stone cloud music paper lamp garden window coffee night bridge forest city dream".split()


def random_texts(count, length, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(length)) for _ in range(count)]


def test_tokens_split_words_punctuation_and_cjk_characters():
    assert words("Hello, World!") == ("hello", ",", "world", "!")
    assert words("我爱苹果 and Привет мир") == ("我", "爱", "苹", "果", "and", "привет", "мир")
    assert words("") == ()


def test_distinct_n_counts_unique_over_all_pooled_ngrams():
    assert distinct_n(["a b", "a c"], 1) == pytest.approx(3 / 4)
    assert distinct_n(["a b", "a c"], 2) == pytest.approx(1.0)
    assert distinct_n(["a b c", "a b d"], 2) == pytest.approx(3 / 4)  # (a b) twice, (b c), (b d)


def test_distinct_is_minimal_for_identical_and_one_for_disjoint_samples():
    assert distinct_n(IDENTICAL, 1) == pytest.approx(6 / 28)  # 6 word types, 7 tokens x 4
    assert distinct_n(IDENTICAL, 2) == pytest.approx(1 / 4)
    assert distinct_n(IDENTICAL, 3) == pytest.approx(1 / 4)
    for n in (1, 2, 3):
        assert distinct_n(DISJOINT, n) == 1.0


def test_distinct_is_undefined_for_one_sample_or_no_ngrams():
    assert distinct_n(["just one answer"], 1) is None
    assert distinct_n(["", ""], 1) is None
    assert distinct_n(["a", "b"], 2) is None  # no bigram anywhere
    assert distinct_n(["", "a b"], 1) == 1.0  # an empty response adds nothing


def test_expectation_adjusted_distinct_by_hand():
    # C = 4 tokens, 3 unique; expected unique under uniform draws from V = 10 words: 10 (1 - 0.9^4) = 3.439
    assert ead_distinct(["a b", "a c"], vocab_size=10) == pytest.approx(3 / 3.439)
    assert ead_distinct(["a"], vocab_size=10) is None
    assert ead_distinct(IDENTICAL) < ead_distinct(DISJOINT)


def test_ngram_entropy_by_hand():
    # unigrams a:3 b:1 -> 0.811278 bits; bigrams (a a), (a b) -> 1 bit; no trigram
    h1 = -(0.75 * math.log2(0.75) + 0.25 * math.log2(0.25))
    assert ngram_entropy(["a a", "a b"]) == pytest.approx((h1 + 1.0) / 2)
    assert ngram_entropy(["yes", "yes", "yes"]) == 0.0
    assert ngram_entropy(["a", "b", "c", "d"]) == pytest.approx(2.0)
    assert ngram_entropy(["", ""]) is None and ngram_entropy(["a b c"]) is None


def test_self_bleu_is_one_for_identical_and_zero_for_disjoint_samples():
    assert self_bleu(IDENTICAL) == pytest.approx(1.0)
    assert self_bleu(DISJOINT) == pytest.approx(0.0)
    assert self_bleu(["one answer"]) is None and self_bleu(["", ""]) is None


def test_self_bleu_equals_sacrebleu_sentence_bleu_against_the_other_samples():
    sacrebleu = pytest.importorskip("sacrebleu")
    texts = ["the quick brown fox jumps over the lazy dog", "a quick brown dog jumps over the fox",
             "the lazy cat sleeps all day long", "quick thinking saves the day"]
    expected = np.mean([sacrebleu.sentence_bleu(t, texts[:i] + texts[i + 1:], tokenize="none").score
                        for i, t in enumerate(texts)]) / 100
    assert self_bleu(texts) == pytest.approx(expected, abs=1e-12)


def test_compression_ratio_is_raw_over_gzip_size_and_higher_for_repetition():
    texts = random_texts(10, 60, seed=1)
    raw = "\n".join(texts).encode()
    assert compression_ratio(texts) == pytest.approx(len(raw) / len(gzip.compress(raw)))
    assert compression_ratio([texts[0]] * 10) > 3 * compression_ratio(texts)
    assert compression_ratio(["", " "]) is None and compression_ratio(["x"]) is None


def test_lcs_by_hand_and_rouge_l_f1():
    assert lcs_length(tuple("abcd"), tuple("acde")) == 3
    assert lcs_length(tuple("abc"), ()) == 0
    assert lcs_length(tuple("aaaa"), tuple("aa")) == 2
    assert rouge_l("a b c d", "a c d e") == pytest.approx(0.75)  # 2 * 3 / (4 + 4)
    assert rouge_l("", "") == 1.0 and rouge_l("", "a") == 0.0


def test_homogenization_is_one_for_identical_and_zero_for_disjoint_samples():
    assert homogenization(IDENTICAL) == pytest.approx(1.0)
    assert homogenization(DISJOINT) == 0.0
    # pairs: (abcd, acde) 0.75, (abcd, wxyz) 0, (acde, wxyz) 0
    assert homogenization(["a b c d", "a c d e", "w x y z"]) == pytest.approx(0.25)
    assert homogenization(["你好世界", "你好世界"]) == 1.0  # CJK is not dropped
    assert homogenization(["alone"]) is None


def test_rouge_l_equals_rouge_score_on_fixed_texts():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")

    class Tokenizer:
        def tokenize(self, text):
            return list(words(text))

    scorer = rouge_scorer.RougeScorer(["rougeL"], tokenizer=Tokenizer())
    texts = random_texts(12, 40, seed=2) + ["The sea, the sea!", "Once upon a time, a dragon.", "x"]
    for a in texts:
        for b in texts[:6]:
            assert rouge_l(a, b) == pytest.approx(scorer.score(a, b)["rougeL"].fmeasure, abs=1e-12)


def test_ngram_vendi_spans_one_to_n():
    assert ngram_vendi(IDENTICAL) == pytest.approx(1.0)
    assert ngram_vendi(DISJOINT) == pytest.approx(4.0)
    assert ngram_vendi(["", ""]) == pytest.approx(1.0)  # two empty answers are the same answer
    assert ngram_vendi(["alone"]) is None


def test_ngram_vendi_does_not_count_different_short_answers_as_alike():
    # Vendi (Friedman & Dieng 2023) with k = mean over n = 1..4 of the n-gram count cosine. One-word
    # answers have no 2-, 3- or 4-grams; that makes "paris" and "london" no more alike: they share no
    # n-gram of any order, so k = I and the score is n (3), as distinct-1 = 1 says.
    assert ngram_kernel(["Paris", "London"]) == pytest.approx(np.eye(2))
    assert ngram_vendi(["Paris", "London", "Rome"]) == pytest.approx(3.0)
    assert ngram_vendi(["a b", "c d"]) == pytest.approx(2.0)
    assert ngram_vendi(["Paris", "Paris"]) == pytest.approx(1.0)  # the same short answer twice
    # "a b", "a b", "a c": k(ab, ab) = 1; k(ab, ac) = (1/2 [unigram cosine] + 0 + 0 + 0) / 4 = 1/8
    kernel = np.array([[1, 1, 1 / 8], [1, 1, 1 / 8], [1 / 8, 1 / 8, 1]])
    eigenvalues = np.linalg.eigvalsh(kernel / 3)
    eigenvalues = eigenvalues[eigenvalues > 1e-12]
    assert ngram_vendi(["a b", "a b", "a c"]) == pytest.approx(math.exp(-(eigenvalues * np.log(eigenvalues)).sum()))


def test_ngram_vendi_equals_vendi_score_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    text = pytest.importorskip("sklearn.feature_extraction.text")
    from sklearn.preprocessing import normalize

    texts = random_texts(6, 30, seed=3)
    kernels = []
    for n in (1, 2, 3, 4):  # vendi_score.text_utils.ngram_vendi_score, with baco's tokenizer
        counts = text.CountVectorizer(tokenizer=lambda s: list(words(s)), ngram_range=(n, n), lowercase=False,
                                      token_pattern=None).fit_transform(texts)
        unit = normalize(counts)
        kernels.append((unit @ unit.T).toarray())
    kernel = np.mean(kernels, axis=0)
    assert ngram_kernel(texts) == pytest.approx(kernel, abs=1e-12)
    assert ngram_vendi(texts) == pytest.approx(vendi_reference(vendi, kernel), rel=1e-9)


def vendi_reference(vendi, kernel):
    """vendi_score.vendi.score_K; it reads scipy.sparse.csr, deprecated in SciPy 1.x, gone in 2.0."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            return vendi.score_K(kernel)
        except AttributeError:
            pytest.skip("vendi-score does not run on this SciPy")


def test_first_sentences_share():
    assert first_sentence("  The cat sat.  It left.") == "the cat sat"
    assert first_sentence("我爱你。你好") == "我爱你"
    responses = ["The cat sat. It left.", "the cat   sat!  Another.", "A dog ran."]
    assert unique_first_sentences(responses) == pytest.approx(2 / 3)
    assert unique_first_sentences(DISJOINT) == 1.0
    assert unique_first_sentences(IDENTICAL) == pytest.approx(1 / 4)
    assert unique_first_sentences(["one"]) is None


def test_mixed_languages_are_tokenised_not_dropped():
    assert distinct_n(["我爱苹果", "我爱香蕉"], 1) == pytest.approx(6 / 8)
    assert self_bleu(["我爱苹果", "我爱苹果"]) == pytest.approx(1.0)
    assert distinct_n(["Привет мир", "hello мир"], 1) == pytest.approx(3 / 4)


def test_an_emoji_is_one_token_with_its_skin_tone_variation_selector_and_joined_parts():
    # the parts were tokens of their own: a zero-width joiner or a skin tone counted as a repeated "word"
    assert words("👨\u200d👩\u200d👧 ❤\ufe0f 👍🏽!") == ("👨\u200d👩\u200d👧", "❤\ufe0f", "👍🏽", "!")
    assert distinct_n(["👍🏽 👍🏽", "👍🏻 🎉"], 1) == pytest.approx(3 / 4)


def test_half_width_katakana_and_rare_cjk_ideographs_are_one_token_per_character():
    assert words("ｶﾀｶﾅ テスト") == ("ｶ", "ﾀ", "ｶ", "ﾅ", "テ", "ス", "ト")
    assert words("𠀋𠮷 ok") == ("𠀋", "𠮷", "ok")  # CJK extension B, beyond U+FFFF
    assert short_answer_tokens("𠮷野家の牛丼") == ["𠮷", "野", "家", "の", "牛", "丼"]


def test_combining_marks_stay_inside_their_word():
    # Words are letter runs; a Devanagari vowel sign or virama, an Arabic haraka or a decomposed accent
    # (Unicode category M) is part of the letter before it, not a punctuation token of its own.
    assert words("नमस्ते दुनिया") == ("नमस्ते", "दुनिया")
    assert words("كَتَبَ الوَلَدُ") == ("كَتَبَ", "الوَلَدُ")
    assert words("cafe\u0301!") == ("cafe\u0301", "!")
    # two answers, 4 words, 3 distinct (नमस्ते twice): distinct-1 = 3/4
    assert distinct_n(["नमस्ते दुनिया", "नमस्ते दोस्त"], 1) == pytest.approx(3 / 4)


def test_thai_lao_khmer_and_myanmar_give_a_token_per_letter_with_its_marks():
    # written without spaces between words: a whole Thai sentence was one "word", so two different answers of one
    # sentence each shared no n-gram however alike they were
    assert words("สวัสดีครับ") == ("ส", "วั", "ส", "ดี", "ค", "รั", "บ")  # a vowel sign stays on its consonant
    assert words("ສະບາຍດີ hi") == ("ສ", "ະ", "ບ", "າ", "ຍ", "ດີ", "hi")
    assert words("មិន") == ("មិ", "ន") and words("မင်") == ("မ", "င်")
    assert distinct_n(["สวัสดีครับ", "สวัสดีค่ะ"], 1) < 1.0  # the shared greeting repeats
    assert short_answer_tokens("สวัสดี") == ["ส", "วั", "ส", "ดี"]


def test_a_zero_width_non_joiner_inside_a_persian_word_keeps_it_one_word():
    assert words("می\u200cخواهم بروم") == ("می\u200cخواهم", "بروم")
    assert words("a\u200c b")[0] == "a"  # not between two letters: it joins nothing
