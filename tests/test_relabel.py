"""kd_tf.classify.relabel.map_labels and pipeline.test_sets.load_test_file on real SST-2 rows."""

import os

import numpy as np
import pytest

from kd_tf.classify import DataError, load_table
from kd_tf.classify.relabel import map_labels
from kd_tf.pipeline.test_sets import check_name, default_name, load_test_file


@pytest.fixture(scope="module")
def dev(sst2_dir):
    return load_table(os.path.join(sst2_dir, "dev.tsv"), "sentence", "label")


def _csv(tmp_path, dev, words, rows=30):
    """The first `rows` SST-2 dev rows as a CSV file, labels spelt by `words[label]`."""
    import csv

    path = tmp_path / "sst2" / "head.csv"
    path.parent.mkdir(exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["text", "label"])
        for text, label in zip(dev.texts[:rows], dev.labels[:rows]):
            writer.writerow([text, words[int(label)]])
    return str(path)


def test_integer_labels_map_by_id_and_names_by_name(dev):
    mapped, how = map_labels(dev, ("neg", "pos"))
    np.testing.assert_array_equal(mapped.labels, dev.labels)
    assert mapped.label_names == ("neg", "pos") and mapped.ids.tolist() == dev.ids.tolist()
    assert how == {
        "0": {"label": "neg", "examples": 428, "by": "id"},
        "1": {"label": "pos", "examples": 444, "by": "id"},
    }
    # A run whose labels are the names "0" and "1" maps them by name.
    assert map_labels(dev, ("0", "1"))[1]["1"]["by"] == "name"


def test_names_are_mapped_with_label_map_even_onto_reversed_ids(tmp_path, dev):
    path = _csv(tmp_path, dev, {0: "negative", 1: "positive"})
    data, how = load_test_file(
        path,
        ["pos", "neg"],  # ids in the other order: names decide, not positions
        text_column="text",
        label_column="label",
        label_map={"positive": "pos", "negative": "neg"},
    )
    want = 1 - dev.labels[:30]
    np.testing.assert_array_equal(data.labels, want)
    assert how["positive"] == {"label": "pos", "examples": int(np.sum(dev.labels[:30])), "by": "label_map"}
    assert data.texts.tolist() == dev.texts[:30].tolist() and data.ids[0] == "sst2/head.csv:2"


def test_unknown_labels_name_the_line_count_and_fix(tmp_path, dev):
    path = _csv(tmp_path, dev, {0: "neg", 1: "positive"})
    first = int(np.flatnonzero(dev.labels[:30] == 1)[0]) + 2  # the header is line 1
    count = int(np.sum(dev.labels[:30]))
    with pytest.raises(DataError) as error:
        load_test_file(path, ["neg", "pos"], text_column="text", label_column="label")
    message = str(error.value)
    assert f"head.csv (csv), line {first}: the label 'positive' ({count} of 30 examples)" in message
    assert "--label-map positive=pos" in message and "label_map={'positive': 'pos'}" in message
    with pytest.raises(DataError, match="'good' is not a label of the model; its labels are neg, pos"):
        load_test_file(
            path, ["neg", "pos"], text_column="text", label_column="label", label_map={"x": "good"}
        )
    # An integer beyond the run's labels is not an id of it.
    with pytest.raises(DataError, match="the label '2'"):
        map_labels(load_table(_csv(tmp_path, dev, {0: "0", 1: "2"}), "text", "label"), ("neg", "pos"))


def test_test_set_names():
    assert default_name("tests/data/sst2/dev.tsv") == "sst2-dev"
    assert default_name("/tmp/my reviews/new (2).csv") == "my_reviews-new_2"
    assert check_name("imdb.test_2") == "imdb.test_2"
    for bad in ("test", "../x", ".hidden", "a/b", ""):
        with pytest.raises(Exception, match="use 1 to 64 letters"):
            check_name(bad)
