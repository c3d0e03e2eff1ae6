"""Vocabulary pruning: keep the WordPiece tokens a task corpus needs.

Three quarters of a 2-layer H384 BERT student are its 30,522 x 384 word-embedding table, and one task's
texts use far fewer tokens (the 25,000 IMDB training reviews use 23,357; the 8,000 most frequent cover
96.3% of their wordpieces). Pruning the vocabulary shrinks the student without touching a single kept weight:

1. `count_wordpieces(texts, preprocessor)` tokenizes the corpus with the real preprocessor and counts every
   wordpiece (in the first `seq_length - 2` of each text, what the encoder sees) and every distinct word.
2. `prune_vocabulary(counts, top_k=8000)` (or `coverage=0.99`) chooses the kept set.
3. `write_pruned_bert(encoder, pruned, path)` writes `path/encoder` (the kept rows of the word embeddings,
   bit for bit: `kd_tf.bert.hub_format.write_pruned_encoder`), `path/preprocessor` and `path/vocab.txt`
   (for MediaPipe's tokenizer metadata, `kd_tf.export.metadata.attach_bert_classifier_metadata`).

**Why no text loses a word to `[UNK]`.** WordPiece splits a word greedily, longest piece first; a word
becomes `[UNK]` only where no piece starts at the current position. The kept set holds

* the special tokens (`[PAD]`, `[UNK]`, `[CLS]`, `[SEP]`, `[MASK]`; `[PAD]` keeps id 0),
* the frequent pieces (`top_k` or `coverage`),
* every single-character piece, both `c` and `##c` forms: a position whose character has its piece can
  always be split, so a dropped piece becomes smaller pieces, never `[UNK]`,
* every piece holding an *orphan* character, one whose single-character piece (in that position's form) the
  vocabulary lacks: such a character can only be spelled by longer pieces,
* and a closure on the corpus: every distinct word is split again with the kept set (tensorflow-text's
  `WordpieceTokenizer`, the preprocessor's own algorithm), and a word that now fails gets its original
  pieces back, until none fails. With all of a word's original pieces kept, greedy longest-match finds the
  original split again, so the loop ends.

In the uncased BERT vocabulary every character has both single-character pieces (997 each), so no orphan
exists and the guarantee holds for any text, not only the corpus: a word is `[UNK]` after pruning exactly
when it was before (a word is `[UNK]` only if it holds a character outside the vocabulary, or is longer than
100 bytes). Words whose pieces were all kept split exactly as before; the others split into other pieces,
mostly more and smaller ones (`WordpieceCounts.tokens_per_text` measures the change).
"""

from __future__ import annotations

import collections
import dataclasses
import os
import tempfile

import numpy as np
import tensorflow as tf

from kd_tf.bert.encoder import DEFAULT_SEQ_LENGTH
from kd_tf.bert.hub_format import (
    SPECIAL_TOKENS,
    read_encoder_metadata,
    write_atomically,
    write_bert_preprocessor,
    write_pruned_encoder,
)
from kd_tf.bert.presets import resolve_handle

SUFFIX = "##"
"""The WordPiece continuation prefix: `##ing` continues a word, `ing` starts one."""

_BATCH = 512


def read_vocabulary(vocab_file):
    """Reads a WordPiece vocabulary, one token a line (the line number is the id).

    Args:
        vocab_file: path of a `vocab.txt`.

    Returns:
        A list of str, indexed by token id.

    Raises:
        FileNotFoundError: if the file does not exist.
        ValueError: if a token appears twice (both line numbers are named).

    Example:
    ```python
    read_vocabulary(os.path.join(minilm_checkpoint_dir(), "vocab.txt"))[101]  # '[CLS]'
    ```
    """
    vocab_file = os.fspath(vocab_file)
    if not os.path.isfile(vocab_file):
        raise FileNotFoundError(f"vocabulary {vocab_file} not found.")
    with open(vocab_file, encoding="utf-8") as f:
        tokens = [line.rstrip("\n") for line in f]
    first = {}
    for i, token in enumerate(tokens):
        if token in first:
            raise ValueError(
                f"{vocab_file}: token {token!r} is on line {first[token] + 1} and again on line {i + 1}; "
                f"a WordPiece vocabulary lists each token once."
            )
        first[token] = i
    return tokens


def preprocessor_vocab_file(preprocessor):
    """The `vocab.txt` asset inside a TF-Hub-format BERT preprocessor folder.

    Args:
        preprocessor: a `HubPreprocessor`, a local folder, or a local preset name
            (`"kd-tf:all-MiniLM-L6-v2"`).

    Returns:
        The path of the folder's `assets/vocab.txt`.

    Raises:
        FileNotFoundError: if the folder holds no `assets/vocab.txt` (a URL, or another kind of
            preprocessor): pass the vocabulary it was written with instead.

    Example:
    ```python
    preprocessor_vocab_file("/tmp/preprocessor")  # '/tmp/preprocessor/assets/vocab.txt'
    ```
    """
    handle = getattr(preprocessor, "handle", preprocessor)
    folder = resolve_handle(handle, kind="preprocessor")
    path = os.path.join(folder, "assets", "vocab.txt")
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{folder} holds no assets/vocab.txt; pass vocab_file=, the vocabulary the preprocessor "
            f"{handle} was written with."
        )
    return path


# ----------------------------------------------------------------------------
# Counting a corpus.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class WordpieceCounts:
    """How a corpus tokenizes under one vocabulary (written by `count_wordpieces`).

    Attributes:
        vocabulary: the tokens, by id.
        counts: int64 `[vocab_size]`: occurrences of each id in the first `seq_length - 2` wordpieces of
            every text (what a one-segment encoder input holds besides `[CLS]` and `[SEP]`).
        words: the distinct words of the whole texts (lower-cased and split as the tokenizer splits them)
            that tokenize without `[UNK]`, most frequent first.
        word_counts: int64, occurrences of each of `words`.
        lengths: int64 `[num_texts]`: wordpieces of each whole text.
        num_unknown: `[UNK]` wordpieces in the whole texts.
        seq_length: the encoder input length the counts are for.

    Example:
    ```python
    counts = count_wordpieces(reviews, "/tmp/preprocessor")
    counts.tokens_per_text, counts.unknown_rate  # (295.7, 9.5e-07) on the IMDB reviews
    ```
    """

    vocabulary: list
    counts: np.ndarray
    words: np.ndarray
    word_counts: np.ndarray
    lengths: np.ndarray
    num_unknown: int
    seq_length: int

    @property
    def num_texts(self):
        """Number of texts counted."""
        return len(self.lengths)

    @property
    def tokens_per_text(self):
        """Mean wordpieces of a whole text (no truncation, no `[CLS]`/`[SEP]`)."""
        return float(np.mean(self.lengths))

    @property
    def window_tokens_per_text(self):
        """Mean real tokens of an encoder input: `[CLS]`, up to `seq_length - 2` wordpieces, `[SEP]`."""
        return float(np.mean(np.minimum(self.lengths, self.seq_length - 2) + 2))

    @property
    def truncated_fraction(self):
        """Fraction of texts longer than `seq_length - 2` wordpieces (cut by the preprocessor)."""
        return float(np.mean(self.lengths > self.seq_length - 2))

    @property
    def unknown_rate(self):
        """Fraction of the wordpieces of the whole texts that are `[UNK]`."""
        return self.num_unknown / max(int(self.lengths.sum()), 1)

    def coverage(self, token_ids):
        """Fraction of the counted wordpieces whose id is in `token_ids`.

        Args:
            token_ids: ids of the vocabulary counted, e.g. `PrunedVocabulary.kept_ids`.

        Returns:
            A float in [0, 1].

        Example:
        ```python
        counts.coverage(pruned.kept_ids)  # 0.9627
        ```
        """
        return float(self.counts[np.asarray(token_ids, np.int64)].sum() / max(int(self.counts.sum()), 1))


def _word_strings(word_pieces, tokens):
    """Ragged `[words, pieces]` ids back to the word strings ("un", "##believ" -> "unbeliev")."""
    pieces = tf.gather(tokens, word_pieces)
    rest = tf.strings.regex_replace(pieces[:, 1:], "^" + SUFFIX, "")
    return tf.strings.reduce_join(tf.concat([pieces[:, :1], rest], axis=1), axis=1)


def count_wordpieces(
    texts,
    preprocessor,
    seq_length=DEFAULT_SEQ_LENGTH,
    vocab_file=None,
    unknown_token="[UNK]",
    batch_size=_BATCH,
):
    """Tokenizes a corpus with a real BERT preprocessor and counts its wordpieces and words.

    Args:
        texts: the task's texts (a list or array of str), e.g. `load_movie_reviews().texts`.
        preprocessor: a `HubPreprocessor`, or a folder or preset name to load one from.
        seq_length: the encoder input length: wordpieces are counted in the first `seq_length - 2` of each
            text, where the encoder sees them.
        vocab_file: the preprocessor's vocabulary; by default its `assets/vocab.txt`.
        unknown_token: the vocabulary's unknown token.
        batch_size: texts tokenized at a time.

    Returns:
        A `WordpieceCounts`.

    Raises:
        ValueError: if `texts` is empty, `seq_length < 3`, or the vocabulary lacks `unknown_token` or has
            another size than the preprocessor's.
        FileNotFoundError: if the vocabulary cannot be found.

    Example:
    ```python
    counts = count_wordpieces(load_movie_reviews().texts, "kd-tf:all-MiniLM-L6-v2")
    int((counts.counts > 0).sum())  # 23357
    ```
    """
    from kd_tf.bert.hub import HubPreprocessor

    if not isinstance(preprocessor, HubPreprocessor):
        preprocessor = HubPreprocessor(preprocessor, seq_length=seq_length)
    if seq_length < 3:
        raise ValueError(f"seq_length={seq_length} must hold [CLS], one wordpiece and [SEP] (>= 3).")
    vocab_file = vocab_file or preprocessor_vocab_file(preprocessor)
    vocabulary = read_vocabulary(vocab_file)
    if preprocessor.vocab_size is not None and preprocessor.vocab_size != len(vocabulary):
        raise ValueError(
            f"{vocab_file} has {len(vocabulary)} tokens but the preprocessor {preprocessor.handle} "
            f"{preprocessor.vocab_size}; pass the vocabulary it was written with."
        )
    if unknown_token not in vocabulary:
        raise ValueError(f"{vocab_file} lacks the unknown token {unknown_token!r}; pass unknown_token=.")
    texts = [str(t) for t in texts]
    if not texts:
        raise ValueError("texts is empty: count the wordpieces of at least one text.")
    unk_id = vocabulary.index(unknown_token)
    tokens = tf.constant(vocabulary)
    counts = np.zeros(len(vocabulary), np.int64)
    words = collections.Counter()
    lengths, num_unknown = [], 0
    for start in range(0, len(texts), batch_size):
        ragged = preprocessor.tokenize(tf.constant(texts[start : start + batch_size]))  # [B, words, pieces]
        pieces = ragged.merge_dims(1, 2)
        lengths.append(pieces.row_lengths().numpy())
        counts += np.bincount(pieces[:, : seq_length - 2].flat_values.numpy(), minlength=len(vocabulary))
        num_unknown += int(np.sum(pieces.flat_values.numpy() == unk_id))
        word_pieces = ragged.merge_dims(0, 1)
        known = tf.logical_not(tf.reduce_any(tf.equal(word_pieces, unk_id), axis=1))
        strings = tf.boolean_mask(_word_strings(word_pieces, tokens), known).numpy()
        unique, frequency = np.unique(strings, return_counts=True)
        words.update(dict(zip(unique, frequency.tolist())))
    ranked = sorted(words.items(), key=lambda item: (-item[1], item[0]))
    return WordpieceCounts(
        vocabulary=vocabulary,
        counts=counts,
        words=np.array([w.decode("utf-8") for w, _ in ranked], dtype=object),
        word_counts=np.array([c for _, c in ranked], np.int64),
        lengths=np.concatenate(lengths).astype(np.int64),
        num_unknown=num_unknown,
        seq_length=int(seq_length),
    )


# ----------------------------------------------------------------------------
# Choosing the kept set.
# ----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class PrunedVocabulary:
    """A vocabulary cut down to the tokens a corpus needs (written by `prune_vocabulary`).

    Attributes:
        tokens: the kept tokens by new id: the original order with the gaps closed, so `[PAD]` stays 0.
        kept_ids: int64: the original id of each kept token (new id `i` is old id `kept_ids[i]`).
        source_size: size of the original vocabulary.
        added: how many tokens each rule added that earlier rules had not, in the order applied:
            `special`, `frequent`, `single_character`, `orphan`, `corpus`.

    Example:
    ```python
    pruned = prune_vocabulary(counts, top_k=8000)
    len(pruned.tokens), pruned.added["single_character"]  # (9898, 1893)
    ```
    """

    tokens: list
    kept_ids: np.ndarray
    source_size: int
    added: dict

    def id_map(self):
        """int64 `[source_size]`: the new id of every original id, -1 for dropped tokens.

        Example:
        ```python
        pruned.id_map()[101]  # 2: [CLS] moved from 101 to 2
        ```
        """
        mapping = np.full(self.source_size, -1, np.int64)
        mapping[self.kept_ids] = np.arange(len(self.kept_ids))
        return mapping

    def write_vocabulary(self, path):
        """Writes the kept tokens as a `vocab.txt`, atomically (a temporary file renamed into place).

        Args:
            path: the file to create.

        Returns:
            `path`.

        Raises:
            FileExistsError: if `path` exists.

        Example:
        ```python
        pruned.write_vocabulary("/tmp/vocab_8k.txt")  # '/tmp/vocab_8k.txt'
        ```
        """
        path = os.fspath(path)
        if os.path.exists(path):
            raise FileExistsError(f"{path} already exists; choose a new file name or delete it first.")
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-vocab-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("".join(token + "\n" for token in self.tokens))
            os.replace(tmp, path)
        except BaseException:
            if os.path.exists(tmp):
                os.remove(tmp)
            raise
        return path


def _frequent_ids(counts, candidates, top_k, coverage):
    order = candidates[np.lexsort((candidates, -counts[candidates]))]
    order = order[counts[order] > 0]
    if top_k is not None or not len(order):
        return order[:top_k]
    cumulative = np.cumsum(counts[order])
    return order[: int(np.searchsorted(cumulative, coverage * cumulative[-1], side="left")) + 1]


def _single_character_ids(vocabulary):
    return [
        i
        for i, t in enumerate(vocabulary)
        if len(t) == 1 or (t.startswith(SUFFIX) and len(t) == len(SUFFIX) + 1)
    ]


def _orphan_ids(vocabulary, special):
    """Pieces that spell a character whose single-character piece of that form the vocabulary lacks."""
    starts = {t for t in vocabulary if len(t) == 1}
    continues = {t[len(SUFFIX) :] for t in vocabulary if t.startswith(SUFFIX) and len(t) == len(SUFFIX) + 1}
    orphans = []
    for i, token in enumerate(vocabulary):
        if i in special:
            continue
        body = token[len(SUFFIX) :] if token.startswith(SUFFIX) else token
        first_continues = token.startswith(SUFFIX)
        if any(c not in (continues if (j > 0 or first_continues) else starts) for j, c in enumerate(body)):
            orphans.append(i)
    return orphans


def _wordpiece(tokens, ids, unknown_token):
    """tensorflow-text's WordPiece (the preprocessor's own) on a token list, returning the given ids."""
    import tensorflow_text as text

    table = tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(tokens), tf.constant(ids, tf.int64)), -1
    )
    return text.WordpieceTokenizer(
        table, suffix_indicator=SUFFIX, token_out_type=tf.int64, unknown_token=unknown_token
    )


def _corpus_closure(vocabulary, kept, words, unknown_token):
    """Adds back the original pieces of every corpus word that no longer tokenizes; returns the additions."""
    if not len(words):
        return set()
    unk_id = vocabulary.index(unknown_token)
    word_tensor = tf.constant(list(words))
    original = _wordpiece(vocabulary, np.arange(len(vocabulary)), unknown_token).tokenize(word_tensor)
    added = set()
    while True:
        ids = sorted(kept | added)
        split = _wordpiece([vocabulary[i] for i in ids], ids, unknown_token).tokenize(word_tensor)
        broken = tf.reduce_any(tf.equal(split, unk_id), axis=1).numpy()
        if not broken.any():
            return added
        missing = set(tf.ragged.boolean_mask(original, broken).flat_values.numpy().tolist()) - kept - added
        if not missing:  # cannot happen: a word with all its original pieces splits as before
            raise AssertionError(f"words {words[broken][:5]} fail with all their original pieces kept.")
        added |= missing


def prune_vocabulary(counts, top_k=None, coverage=None, special_tokens=SPECIAL_TOKENS, unknown_token="[UNK]"):
    """Chooses the tokens to keep for a corpus: the frequent ones, and what keeps every word splittable.

    Args:
        counts: the corpus's `WordpieceCounts` (from `count_wordpieces`).
        top_k: keep the `top_k` most frequent wordpieces (ties broken by id) ...
        coverage: ... or the fewest most frequent ones whose occurrences reach this fraction of the counted
            wordpieces (in `(0, 1]`). Give exactly one of the two.
        special_tokens: tokens always kept.
        unknown_token: the token of words that cannot be split.

    Returns:
        A `PrunedVocabulary`: the frequent pieces plus the special tokens, every single-character piece,
        every piece holding an orphan character and the corpus closure (see the module docstring); its
        size is therefore larger than `top_k`.

    Raises:
        ValueError: if neither or both of `top_k` and `coverage` are given, either is out of range, or the
            vocabulary lacks a special token.

    Example:
    ```python
    pruned = prune_vocabulary(counts, coverage=0.99)
    len(pruned.tokens)  # 15910
    ```
    """
    if (top_k is None) == (coverage is None):
        raise ValueError("give exactly one of top_k= (a number of tokens) and coverage= (a fraction).")
    if top_k is not None and (not isinstance(top_k, (int, np.integer)) or top_k < 0):
        raise ValueError(f"top_k={top_k!r} must be an integer >= 0.")
    if coverage is not None and not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage={coverage!r} must be a fraction in (0, 1].")
    vocabulary = counts.vocabulary
    index = {t: i for i, t in enumerate(vocabulary)}
    missing = [t for t in list(special_tokens) + [unknown_token] if t not in index]
    if missing:
        raise ValueError(
            f"the counted vocabulary lacks the special tokens {missing}; pass special_tokens= and "
            f"unknown_token= as the vocabulary spells them."
        )
    special = {index[t] for t in special_tokens} | {index[unknown_token]}
    candidates = np.array(sorted(set(range(len(vocabulary))) - special), np.int64)
    rules = [
        ("special", special),
        ("frequent", _frequent_ids(counts.counts, candidates, top_k, coverage).tolist()),
        ("single_character", _single_character_ids(vocabulary)),
        ("orphan", _orphan_ids(vocabulary, special)),
    ]
    kept, added = set(), {}
    for name, ids in rules:
        new = set(ids) - kept
        added[name] = len(new)
        kept |= new
    corpus = _corpus_closure(vocabulary, kept, counts.words, unknown_token)
    added["corpus"] = len(corpus)
    kept_ids = np.array(sorted(kept | corpus), np.int64)
    return PrunedVocabulary(
        tokens=[vocabulary[i] for i in kept_ids],
        kept_ids=kept_ids,
        source_size=len(vocabulary),
        added=added,
    )


# ----------------------------------------------------------------------------
# Writing the pruned model.
# ----------------------------------------------------------------------------
def write_pruned_bert(encoder_path, pruned, path, lower_case=True):
    """Writes an encoder, its preprocessor and `vocab.txt` on a pruned vocabulary, side by side.

    Args:
        encoder_path: an encoder folder written by `kd_tf.bert.hub_format` on the vocabulary `pruned` was
            cut from (a teacher, or a student from `write_student_from_teacher` or `write_narrow_student`).
        pruned: a `PrunedVocabulary`.
        path: the folder to create.
        lower_case: whether the preprocessor lower-cases (uncased models).

    Returns:
        A dict with the paths `"encoder"`, `"preprocessor"` and `"vocab_file"` (for MediaPipe's tokenizer
        metadata).

    Raises:
        ValueError: if the encoder's vocabulary is not the one `pruned` was cut from (another size).
        FileExistsError: if `path` holds files already.

    Example:
    ```python
    paths = write_pruned_bert("/tmp/student", prune_vocabulary(counts, top_k=8000), "/tmp/student_8k")
    HubPreprocessor(paths["preprocessor"]).vocab_size  # 9898
    ```
    """
    vocab_size = read_encoder_metadata(encoder_path)["config"]["vocab_size"]
    if vocab_size != pruned.source_size:
        raise ValueError(
            f"{encoder_path} has a vocabulary of {vocab_size} tokens, but the pruned vocabulary was cut "
            f"from one of {pruned.source_size}: count the corpus with the encoder's own preprocessor."
        )
    path = os.fspath(path)
    names = {"encoder": "encoder", "preprocessor": "preprocessor", "vocab_file": "vocab.txt"}

    def write(tmp):
        vocab_file = pruned.write_vocabulary(os.path.join(tmp, names["vocab_file"]))
        write_pruned_encoder(encoder_path, os.path.join(tmp, names["encoder"]), pruned.kept_ids)
        write_bert_preprocessor(os.path.join(tmp, names["preprocessor"]), vocab_file, lower_case=lower_case)

    write_atomically(path, write)
    return {key: os.path.join(path, name) for key, name in names.items()}


__all__ = [
    "PrunedVocabulary",
    "SUFFIX",
    "WordpieceCounts",
    "count_wordpieces",
    "preprocessor_vocab_file",
    "prune_vocabulary",
    "read_vocabulary",
    "write_pruned_bert",
]
