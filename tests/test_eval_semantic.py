"""Vendi score, embedding diversity and NoveltyBench partitions / utility."""

import math

import numpy as np
import pytest

from baco.evaluate.partitions import (ClassifierEquivalence, EmbeddingEquivalence, UnigramEquivalence,
                                      distinct_partitions, partition, rouge1_f, short_answer_rule, utility)
from baco.evaluate.semantic import embedding_distance, embedding_vendi, vendi_score


class TableEmbedder:
    """Hand-chosen unit vectors per text: the test decides the geometry."""

    def __init__(self, table):
        self.table = {k: np.asarray(v, dtype=float) / np.linalg.norm(v) for k, v in table.items()}

    def __call__(self, texts):
        return np.stack([self.table[t] for t in texts])


class TableEquivalence:
    """Equivalent pairs given by hand (symmetric)."""

    name = "table"

    def __init__(self, pairs):
        self.pairs = {frozenset(p) for p in pairs}

    def same(self, prompt, anchor, candidates):
        return [anchor == c or frozenset((anchor, c)) in self.pairs for c in candidates]


@pytest.fixture
def embedder():
    from baco.evaluate.embeddings import default_embedder

    return default_embedder()  # all-MiniLM-L6-v2, loaded once per test process


def entropy_exp(*eigenvalues):
    return math.exp(-sum(v * math.log(v) for v in eigenvalues if v > 0))


def test_vendi_score_by_hand():
    assert vendi_score(np.eye(5)) == pytest.approx(5.0)
    assert vendi_score(np.ones((5, 5))) == pytest.approx(1.0)
    # [[1, s], [s, 1]] / 2 has eigenvalues (1 +- s) / 2
    assert vendi_score(np.array([[1.0, 0.5], [0.5, 1.0]])) == pytest.approx(entropy_exp(0.75, 0.25))


def test_vendi_score_equals_vendi_score_package():
    vendi = pytest.importorskip("vendi_score.vendi")
    from test_eval_lexical import vendi_reference

    x = np.random.default_rng(0).normal(size=(7, 5))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    kernel = x @ x.T
    assert vendi_score(kernel) == pytest.approx(vendi_reference(vendi, kernel), rel=1e-9)


def test_embedding_distance_and_vendi_on_hand_made_geometry():
    embedder = TableEmbedder({"a": [1, 0], "b": [0, 1], "c": [1, 0], "d": [1, 1]})
    assert embedding_distance(["a", "b", "c"], embedder=embedder) == pytest.approx(2 / 3)
    # kernel [[1,0,1],[0,1,0],[1,0,1]] has eigenvalues 2, 1, 0 -> /3
    assert embedding_vendi(["a", "b", "c"], embedder=embedder) == pytest.approx(entropy_exp(2 / 3, 1 / 3))
    assert embedding_distance(["a", "c"], embedder=embedder) == pytest.approx(0.0)
    assert embedding_vendi(["a", "a", "a"], embedder=embedder) == pytest.approx(1.0)
    assert embedding_distance(["a", "d"], embedder=embedder) == pytest.approx(1 - math.sqrt(0.5))
    assert embedding_distance(["a"], embedder=embedder) is None and embedding_vendi(["a"], embedder=embedder) is None


def test_real_minilm_embeddings_separate_identical_from_different_texts(embedder):
    same = ["The capital of France is Paris."] * 3
    different = ["The capital of France is Paris.", "Bananas are rich in potassium.",
                 "A quiet harbour at dawn, boats asleep."]
    assert embedding_distance(same, embedder=embedder) == pytest.approx(0.0, abs=1e-6)
    assert embedding_vendi(same, embedder=embedder) == pytest.approx(1.0, abs=1e-4)
    assert embedding_distance(different, embedder=embedder) > 0.5
    assert embedding_vendi(different, embedder=embedder) > 2.5
    assert embedding_distance(["", ""], embedder=embedder) == pytest.approx(0.0, abs=1e-6)


def test_short_answer_rule_as_noveltybench():
    assert short_answer_rule("Paris", "paris") is True
    assert short_answer_rule("apple", "banana") is False
    assert short_answer_rule("red apple", "green apple") is True  # 2 * 1 >= 2
    assert short_answer_rule("a b c", "a d e") is False  # 2 * 1 < 3
    assert short_answer_rule("", "") is True
    assert short_answer_rule("Kiwi!", "kiwi") is True  # punctuation around words ignored
    assert short_answer_rule("one two three four five six", "one") is None  # too long: ask the model
    # an unspaced CJK answer is split per character, so it is long: ask the model
    assert short_answer_rule("我最喜欢的水果是苹果因为很甜", "我最喜欢的水果是香蕉因为很甜") is None


def test_partition_is_greedy_and_compares_with_first_members_only():
    equivalence = TableEquivalence([("A", "B"), ("B", "C")])  # not transitive: A !~ C
    assert partition("p", ["A", "B", "C"], equivalence) == [0, 0, 1]
    assert partition("p", ["B", "A", "C"], equivalence) == [0, 0, 0]  # order matters
    assert partition("p", ["C", "X", "B", "A"], equivalence) == [0, 1, 0, 2]
    assert partition("p", [], equivalence) == []


def test_partitions_metric_counts_classes(embedder):
    equivalence = EmbeddingEquivalence(embedder)
    same = ["The capital of France is Paris, a large city on the Seine."] * 4
    different = ["The capital of France is Paris, a large city on the Seine.",
                 "Bananas are rich in potassium and make a quick breakfast.",
                 "A quiet harbour at dawn, with the boats asleep and gulls above.",
                 "Quantum computers use qubits that can hold superpositions of states."]
    partitioner = lambda prompt, responses: partition(prompt, responses, equivalence)  # noqa: E731
    assert distinct_partitions(same, prompt="p", partitioner=partitioner) == 1
    assert distinct_partitions(different, prompt="p", partitioner=partitioner) == 4
    assert distinct_partitions(["only"], prompt="p", partitioner=partitioner) is None


def test_embedding_equivalence_threshold_on_hand_made_geometry():
    embedder = TableEmbedder({"first answer here with six words": [1, 0],
                              "second answer here with six words": [0.8, 0.6],
                              "third answer here with six words": [0, 1]})
    texts = list(embedder.table)
    assert EmbeddingEquivalence(embedder, 0.75).same("p", texts[0], texts[1:]) == [True, False]  # cos .8, 0
    assert EmbeddingEquivalence(embedder, 0.85).same("p", texts[0], texts[1:]) == [False, False]


def test_unigram_equivalence_uses_rouge1_f1_as_rouge_score():
    rouge_scorer = pytest.importorskip("rouge_score.rouge_scorer")
    scorer = rouge_scorer.RougeScorer(["rouge1"])
    texts = ["The quick brown fox jumps over the lazy dog.", "A quick brown dog jumps, over and over!",
             "Nothing in common here", "the the the fox"]
    for a in texts:
        for b in texts:
            assert rouge1_f(a, b) == pytest.approx(scorer.score(a, b)["rouge1"].fmeasure, abs=1e-12)
    same = UnigramEquivalence().same("p", texts[0], texts[1:])
    assert same == [scorer.score(texts[0], t)["rouge1"].fmeasure > 0.458 for t in texts[1:]]


def test_utility_by_hand_and_noveltybench_example():
    # one class scoring 10 over n = 10: 10 / sum 0.8^i = 10 / 4.4631 = 2.2406 (NoveltyBench's example)
    assert utility([0] * 10, [10.0] * 10) == pytest.approx(10 / sum(0.8 ** i for i in range(10)))
    assert utility([0] * 10, [10.0] * 10) == pytest.approx(2.2406, abs=1e-4)
    assert utility(list(range(10)), [10.0] * 10) == pytest.approx(10.0)
    # classes [0, 1, 0]: the third is a duplicate and earns 0
    assert utility([0, 1, 0], [5.0, 3.0, 9.0]) == pytest.approx((5 + 0.8 * 3) / (1 + 0.8 + 0.64))
    assert utility([0, 1], [4.0, 2.0], patience=0.5) == pytest.approx((4 + 0.5 * 2) / 1.5)
    assert utility([0], [7.0]) == 7.0 and utility([], []) is None


@pytest.fixture(scope="module")
def tiny_classifier(tmp_path_factory):
    """A random 2-way sequence-pair classifier with the tiny tokenizer."""
    from baco.testing import make_tiny_classifier

    return make_tiny_classifier(tmp_path_factory.mktemp("classifier"), num_labels=2, seed=0)


LONG = ["Once upon a time there was a small dragon who walked everywhere.",
        "Try a warm soup with lentils, carrots and fresh bread tonight.",
        "The grey sea breathes, the tide comes in, the gulls are crying.",
        "First, think about the time you have and the people who come."]


def test_classifier_equivalence_thresholds_and_batching(tiny_classifier):
    always = ClassifierEquivalence(tiny_classifier, threshold=0.0, device="cpu")
    never = ClassifierEquivalence(tiny_classifier, threshold=1.0, device="cpu")
    assert partition("p", LONG, always) == [0, 0, 0, 0]  # P(label 1) > 0 for every pair
    assert partition("p", LONG, never) == [0, 1, 2, 3]  # P(label 1) > 1 for none
    assert partition("p", ["Kiwi!", "kiwi", "a pear"], never) == [0, 0, 1]  # short answers: the rule decides
    one = ClassifierEquivalence(tiny_classifier, device="cpu", batch_size=1).probabilities(LONG[0], LONG)
    many = ClassifierEquivalence(tiny_classifier, device="cpu", batch_size=16).probabilities(LONG[0], LONG)
    assert one == pytest.approx(many, abs=1e-5)
    assert all(0.0 < p < 1.0 for p in one) and len(set(round(p, 6) for p in one)) > 1


def test_classifier_pair_input_truncates_each_response(tiny_classifier):
    equivalence = ClassifierEquivalence(tiny_classifier, device="cpu", max_tokens=3)
    ids, types = equivalence._pair(LONG[0], LONG[1])
    tokenizer = equivalence.tokenizer
    first = tokenizer(LONG[0], add_special_tokens=False)["input_ids"][:3]
    second = tokenizer(LONG[1], add_special_tokens=False)["input_ids"][:3]
    assert ids == [tokenizer.bos_token_id] + first + second  # the tiny tokenizer's pair template: <bos> A B
    assert len(types) == len(ids)


def test_missing_classifier_is_a_clear_error(tmp_path):
    from baco.errors import ModelLoadError

    with pytest.raises(ModelLoadError, match="equivalence classifier"):
        ClassifierEquivalence(str(tmp_path / "nothing"))


def test_bf16_embeddings_stay_close_to_float32(embedder):
    import torch

    from baco.errors import ModelLoadError
    from baco.evaluate.embeddings import Embedder, resolve_embedding_dtype

    assert resolve_embedding_dtype("float32", torch.device("cpu")) == torch.float32
    with pytest.raises(ModelLoadError, match="embedding dtype"):
        resolve_embedding_dtype("int4", torch.device("cpu"))
    texts = ["The capital of France is Paris.", "Bananas are rich in potassium.", "A quiet harbour at dawn."]
    exact = embedder(texts)
    half = Embedder(dtype="bfloat16")(texts)
    assert half.dtype == np.float32
    assert np.abs(exact @ exact.T - half @ half.T).max() < 0.01
