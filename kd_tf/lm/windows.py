"""A `TextCorpus` into fixed windows of tokens for `fit`: `tokenize`, `lm_windows`, `make_lm_dataset`.

The element format (what `fit`, the distiller and the teacher cache read):

    ({"token_ids": int32 [L], "padding_mask": bool [L]}, labels int32 [L], sample_weight float32 [L])

one window per element from `lm_windows`, with a leading batch axis `[B, L]`
from `make_lm_dataset`. `labels[i]` is the token after `token_ids[i]` (the
next-token target), `padding_mask` marks real input tokens, and
`sample_weight[i]` is 1 where `labels[i]` is a real token to learn and 0 for
padding and prompt tokens. These are the names and the shift of KerasHub's
`CausalLMPreprocessor`, so a KerasHub `CausalLM` trains on them (detach its
preprocessor first, see `make_lm_dataset`).

How documents become windows:

- Each document is tokenized by the model's own KerasHub tokenizer (no special
  tokens added) and a separator token is put before it. The separator is
  `<|endoftext|>` when the vocabulary has it (the document boundary SmolLM2
  and GPT-2 were pretrained with), else the tokenizer's end token. A
  prompt/response document is `[sep] prompt response`, weighted `1 0..0 1..1`:
  the response and the separator that ends it are learnt, the prompt is
  context only.
- Packed (`packing=True`, the default): the stream `sep d1 sep d2 ... sep dn
  sep` is cut into windows of L input tokens with a stride of L; each window
  also holds the next token as its last label, so every token after the first
  is a label exactly once and only the last window is padded. Attention
  crosses document boundaries inside a window: KerasHub's causal LMs take only
  a padding mask, not a per-document mask, and this is what GPT-2 and Hugging
  Face's `group_texts` do; the separator tells the model a new document starts.
- Unpacked (`packing=False`): each document's own `sep d sep` is cut the same
  way and padded, so attention never crosses documents, at the cost of
  padding (for prompt/response data and per-document evaluation).

Windows without a single weighted label (all prompt) are dropped. Masks come
from the cutting, never from comparing ids with the pad id (SmolLM2's pad id 0
is the real token `<|endoftext|>`).

Tokenization runs once, in KerasHub's TensorFlow path (a `tf.function`
traced once per tokenizer and process), and the windows are held in memory as
int32 arrays (13 bytes a token) served by `tf.data`. Two measured reasons:
KerasHub 0.32's TensorFlow tokenizer graph for SmolLM2 takes 6-22 s to trace
and again 5-10 s to instantiate for every new `tf.data` iterator (every
epoch) on 2 shared CPU cores, so a tokenizing `map` would pay that per epoch;
and only the TensorFlow path matches Hugging Face's tokenizer (KerasHub's eager
path, used by `tokenizer(str)` outside `tf.function`, splits `" 'space'"` as
`" ", "'s", "pace"`; 9 of 400 IMDB reviews tokenize differently).
"""

import weakref

import numpy as np
import tensorflow as tf

from kd_tf.lm.models import _tokenizer_of

__all__ = ["cut_windows", "lm_windows", "make_lm_dataset", "separator_id", "tokenize"]

TOKEN_IDS = "token_ids"
PADDING_MASK = "padding_mask"
DEFAULT_SEPARATOR = "<|endoftext|>"

# Texts per call of the traced tokenizer.
_TOKENIZE_BATCH = 256
_TRACED = weakref.WeakKeyDictionary()


def _traced_tokenizer(tokenizer):
    """`tokenizer` in a `tf.function` over `[None]` strings, traced once per tokenizer."""
    traced = _TRACED.get(tokenizer)
    if traced is None:
        owner = weakref.ref(tokenizer)  # the cache must not keep the tokenizer alive
        traced = tf.function(
            lambda texts: tf.cast(owner()(texts), tf.int32),
            input_signature=[tf.TensorSpec([None], tf.string)],
        )
        _TRACED[tokenizer] = traced
    return traced


def tokenize(tokenizer, texts):
    """Token ids of texts, from KerasHub's TensorFlow tokenizer path (no special tokens added).

    The same ids as Hugging Face's tokenizer for the byte-pair models tested
    here; KerasHub's eager path differs on some `'s` (see the module
    docstring). The first call per tokenizer traces it (seconds to tens of
    seconds for a 49k-token vocabulary); later calls are fast.

    Args:
        tokenizer: a KerasHub `CausalLM`, `CausalLMPreprocessor` or tokenizer.
        texts: a `str` or a sequence of them.

    Returns:
        An int32 numpy array for a `str`, else a list of them.

    Raises:
        ValueError: if `tokenizer` is neither a causal LM with a preprocessor,
            a preprocessor nor a tokenizer.

    Example:

    ```python
    tokenize(teacher, "The capital of France is")  # array([504, 3575, 282, 4649, 314], dtype=int32)
    ```
    """
    single = isinstance(texts, str)
    texts = [texts] if single else list(texts)
    traced = _traced_tokenizer(_tokenizer_of(tokenizer))
    out = []
    for start in range(0, len(texts), _TOKENIZE_BATCH):
        ragged = traced(tf.constant(texts[start : start + _TOKENIZE_BATCH], tf.string))
        values, splits = ragged.flat_values.numpy(), ragged.row_splits.numpy()
        out += np.split(values, splits[1:-1])
    return out[0] if single else out


def separator_id(tokenizer, separator=None):
    """The id of the token put between documents.

    Args:
        tokenizer: a KerasHub `CausalLM`, `CausalLMPreprocessor` or tokenizer.
        separator: a token (`"<|im_end|>"`), an id, or `None` for the default:
            `<|endoftext|>` if the vocabulary has it, else the tokenizer's end
            token.

    Returns:
        The separator's token id (an int).

    Raises:
        ValueError: if the token is not in the vocabulary or the id is out of
            range.

    Example:

    ```python
    separator_id(teacher)  # 0, SmolLM2's <|endoftext|>
    ```
    """
    tokenizer = _tokenizer_of(tokenizer)
    size = int(tokenizer.vocabulary_size())
    if separator is None:
        try:
            return int(tokenizer.token_to_id(DEFAULT_SEPARATOR))
        except (KeyError, ValueError):
            end = getattr(tokenizer, "end_token_id", None)
            if end is None:
                raise ValueError(
                    f"The vocabulary has no {DEFAULT_SEPARATOR} and the tokenizer no end token: "
                    "pass separator= a token or an id."
                ) from None
            return int(end)
    if isinstance(separator, (int, np.integer)) and not isinstance(separator, bool):
        if not 0 <= separator < size:
            raise ValueError(f"separator id {separator} is outside the vocabulary (0..{size - 1}).")
        return int(separator)
    try:
        return int(tokenizer.token_to_id(str(separator)))
    except (KeyError, ValueError):
        raise ValueError(
            f"separator {separator!r} is not a token of the vocabulary; pass a token it has "
            f"(e.g. {DEFAULT_SEPARATOR!r} or the end token {getattr(tokenizer, 'end_token', None)!r}) "
            "or an id."
        ) from None


def cut_windows(ids, weights, length, stride=None, pad_id=0):
    """Windows of `length` input tokens every `stride` tokens over one token sequence.

    Window k holds inputs `ids[k*stride : k*stride + length]` and labels
    `ids[k*stride + 1 : k*stride + length + 1]`; windows continue until the
    last token is a label. A label is weighted (by `weights` of the label's
    token) only in the first window that holds it, so every token after the
    first is weighted exactly once; with `stride < length`, the labels of a
    later window have at least `length - stride + 1` tokens of context.
    Positions past the end are padding (`padding_mask` False, weight 0).

    Args:
        ids: int array `[n]` of token ids.
        weights: float array `[n]`, the weight of each token as a label.
        length: input tokens per window.
        stride: tokens between window starts (default `length`: consecutive
            windows share one token, the last label of one being the first
            input of the next).
        pad_id: id written at padded positions.

    Returns:
        A dict of numpy arrays `[K, length]`: `token_ids`, `padding_mask`,
        `labels`, `sample_weight` (K = 0 when `n < 2`).

    Raises:
        ValueError: if `stride` is outside `1..length`.

    Example:

    ```python
    cut_windows(np.arange(6), np.ones(6), 3)["labels"]  # [[1, 2, 3], [4, 5, 0]]
    ```
    """
    ids, weights = np.asarray(ids, np.int32), np.asarray(weights, np.float32)
    stride = length if stride is None else int(stride)
    if not 1 <= stride <= length:
        raise ValueError(f"stride must be in 1..{length} (the window length), not {stride}.")
    n = len(ids)
    count = 0 if n < 2 else 1 + -(-max(0, n - 1 - length) // stride)
    index = np.arange(count)[:, None] * stride + np.arange(length + 1)[None, :]
    real = index < n
    clipped = np.minimum(index, max(n - 1, 0))
    tokens = np.where(real, ids[clipped] if n else 0, pad_id).astype(np.int32)
    label_weights = np.where(real, weights[clipped] if n else 0, 0).astype(np.float32)[:, 1:]
    label_weights[1:, : length - stride] = 0.0  # already a label of the previous window
    return {
        TOKEN_IDS: tokens[:, :-1],
        PADDING_MASK: real[:, :-1],
        "labels": tokens[:, 1:],
        "sample_weight": label_weights,
    }


def _pad_id(tokenizer):
    """The id written at padded positions: the tokenizer's pad id, else 0 (masks say what is padding)."""
    return int(getattr(_tokenizer_of(tokenizer), "pad_token_id", None) or 0)


def _document_tokens(corpus, tokenizer, separator):
    """(ids, weights) of `[sep] prompt text` for each document."""
    texts = tokenize(tokenizer, corpus.texts)
    prompts = tokenize(tokenizer, corpus.prompts) if corpus.prompts is not None else [()] * len(texts)
    sep = np.asarray([separator], np.int32)
    for prompt, text in zip(prompts, texts):
        ids = np.concatenate([sep, np.asarray(prompt, np.int32), text])
        weights = np.concatenate([[1.0], np.zeros(len(prompt)), np.ones(len(text))]).astype(np.float32)
        yield ids, weights


def _window_arrays(corpus, tokenizer, sequence_length, packing, separator):
    tokenizer = _tokenizer_of(tokenizer)
    sep = separator_id(tokenizer, separator)
    pad_id = _pad_id(tokenizer)
    documents = list(_document_tokens(corpus, tokenizer, sep))
    closing = (np.asarray([sep], np.int32), np.ones(1, np.float32))
    if packing:
        ids, weights = (np.concatenate(parts) for parts in zip(*documents, closing))
        windows = [cut_windows(ids, weights, sequence_length, pad_id=pad_id)]
    else:
        windows = [
            cut_windows(
                *(np.concatenate(parts) for parts in zip(document, closing)), sequence_length, pad_id=pad_id
            )
            for document in documents
        ]
    arrays = {key: np.concatenate([w[key] for w in windows]) for key in windows[0]}
    keep = arrays["sample_weight"].sum(axis=1) > 0
    return {key: value[keep] for key, value in arrays.items()}


def _as_dataset(arrays):
    inputs = {TOKEN_IDS: arrays[TOKEN_IDS], PADDING_MASK: arrays[PADDING_MASK]}
    return tf.data.Dataset.from_tensor_slices((inputs, arrays["labels"], arrays["sample_weight"]))


def lm_windows(corpus, tokenizer, sequence_length, *, packing=True, separator=None):
    """One window of tokens per element, in corpus order (unbatched, deterministic).

    The input of `kd_tf.distill.TeacherCache` (which needs an unbatched,
    deterministic dataset) and of `make_lm_dataset`. See the module docstring
    for the element format, the separator and packing. The dataset knows its
    length (`len(windows)`).

    Args:
        corpus: a `kd_tf.lm.TextCorpus`.
        tokenizer: the model's KerasHub `CausalLM`, `CausalLMPreprocessor` or
            tokenizer (teacher and student share it).
        sequence_length: L, the input tokens per window (at most the model's
            context length).
        packing: pack documents into shared windows (`True`), or give each
            document its own windows (`False`).
        separator: the token before each document (see `separator_id`).

    Returns:
        A `tf.data.Dataset` of `({"token_ids": [L], "padding_mask": [L]},
        labels [L], sample_weight [L])`.

    Raises:
        ValueError: if `sequence_length < 1`, the corpus is empty or the
            separator is unknown.

    Example:

    ```python
    windows = lm_windows(load_imdb_corpus(limit=100), teacher, 128)
    x, labels, weights = next(iter(windows))
    ```
    """
    if int(sequence_length) < 1:
        raise ValueError(f"sequence_length must be >= 1, not {sequence_length}.")
    if not len(corpus):
        raise ValueError(f"{corpus.source or 'The corpus'} has no documents.")
    return _as_dataset(_window_arrays(corpus, tokenizer, int(sequence_length), packing, separator))


def make_lm_dataset(
    corpus,
    tokenizer,
    sequence_length,
    batch_size=8,
    *,
    packing=True,
    separator=None,
    shuffle=False,
    seed=None,
    drop_remainder=False,
):
    """Batches of token windows for `CausalLM.fit`, `evaluate` and the distiller.

    The windows of `lm_windows`, batched and prefetched. With `shuffle=True`
    the documents are permuted once with `seed` before packing (so the
    windows are a fixed function of the corpus and the seed) and the windows
    are reshuffled every epoch; the same `seed` gives the same batches, epoch
    by epoch, on every run.

    A KerasHub `CausalLM` trains on these batches with its preprocessor
    detached (with it attached, `fit` would try to tokenize them again):

    ```python
    preprocessor, lm.preprocessor = lm.preprocessor, None
    lm.fit(make_lm_dataset(train, preprocessor, 128, shuffle=True, seed=0))
    lm.preprocessor = preprocessor
    ```

    KerasHub's default loss divides the weighted sum of token losses by all
    `B x L` positions; compile with
    `keras.losses.SparseCategoricalCrossentropy(from_logits=True,
    reduction="mean_with_sample_weight")` for a mean over the learnt tokens
    (the two differ when a batch holds padding or prompts).

    Args:
        corpus: a `kd_tf.lm.TextCorpus`.
        tokenizer: the model's KerasHub `CausalLM`, preprocessor or tokenizer.
        sequence_length: L, the input tokens per window.
        batch_size: windows per batch.
        packing: see `lm_windows`.
        separator: see `separator_id`.
        shuffle: permute the documents once and the windows every epoch.
        seed: shuffle seed; `None` gives a different order every run.
        drop_remainder: drop the last, incomplete batch.

    Returns:
        A `tf.data.Dataset` of `({"token_ids": [B, L], "padding_mask":
        [B, L]}, labels [B, L], sample_weight [B, L])`.

    Raises:
        ValueError: as `lm_windows`, or for `batch_size < 1`.

    Example:

    ```python
    train, heldout = load_imdb_corpus(limit=2000).split(0.05, seed=0)
    train_ds = make_lm_dataset(train, teacher, 128, batch_size=8, shuffle=True, seed=0)
    heldout_ds = make_lm_dataset(heldout, teacher, 128, batch_size=8)
    ```
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be >= 1, not {batch_size}.")
    if shuffle:
        corpus = corpus.subset(np.random.default_rng(seed).permutation(len(corpus)), f"shuffled, seed {seed}")
    windows = lm_windows(corpus, tokenizer, sequence_length, packing=packing, separator=separator)
    if shuffle:
        windows = windows.shuffle(int(windows.cardinality()), seed=seed, reshuffle_each_iteration=True)
    return windows.batch(int(batch_size), drop_remainder=drop_remainder).prefetch(tf.data.AUTOTUNE)
