"""Measuring causal LMs: perplexity, next-token agreement, generation speed, size, side-by-side text.

Quality is measured on token windows in the format of `kd_tf.lm.windows`
(`({"token_ids", "padding_mask"}, labels, sample_weight)`): a label counts
where its sample weight is positive (padding and prompt tokens have weight 0).
`token_metrics` runs every model once per batch and aggregates with
`keras.metrics`; `perplexity` and `next_token_agreement` are views of it.

Perplexity of a long text (`perplexity`): the text's tokens `t_0 .. t_{n-1}`
(tokenized without special tokens) are cut by `kd_tf.lm.cut_windows` into
windows of `window` input tokens starting every `stride` tokens. Window k
reads `t[k*stride : k*stride + window]` and predicts the next token at each
position; each token `t_1 .. t_{n-1}` is scored exactly once, in the first
window that predicts it, so tokens after the first window are scored with at
least `window - stride + 1` tokens of context. The perplexity is
`exp(mean over those n - 1 tokens of -log p(t_j | context))`. With
`stride == window` the windows share one token (no token is skipped, unlike
cutting the text into disjoint chunks); smaller strides cost
`window / stride` times more compute for more context.
"""

import contextlib
import math
import time
import weakref

import keras
import keras_hub
import numpy as np
import tensorflow as tf

from kd_tf.lm.models import _tokenizer_of
from kd_tf.lm.windows import PADDING_MASK, TOKEN_IDS, _pad_id, cut_windows, separator_id, tokenize

__all__ = [
    "generation_speed",
    "model_size",
    "next_token_agreement",
    "perplexity",
    "side_by_side",
    "token_metrics",
]


def _batches(windows, batch_size):
    """`(x, labels, weights)` batches, in the dtypes of `kd_tf.lm.windows`, from a batched
    dataset or from `cut_windows` arrays."""
    if isinstance(windows, dict):
        whole = (
            {TOKEN_IDS: windows[TOKEN_IDS], PADDING_MASK: windows[PADDING_MASK]},
            windows["labels"],
            windows["sample_weight"],
        )
        elements = (
            tf.nest.map_structure(lambda values, start=start: values[start : start + batch_size], whole)
            for start in range(0, len(windows["labels"]), batch_size)
        )
    else:
        elements = iter(windows)
    for element in elements:
        if not isinstance(element, tuple) or len(element) != 3:
            raise ValueError(
                "token_metrics needs batches of (inputs, labels, sample_weight) as made by "
                "kd_tf.lm.make_lm_dataset; got elements of structure "
                f"{tf.nest.map_structure(lambda t: tuple(t.shape), element)}."
            )
        x, labels, weights = element
        if len(labels.shape) != 2:
            raise ValueError(
                f"token_metrics needs batched windows [batch, length]; got labels of shape "
                f"{tuple(labels.shape)}. Batch the dataset (make_lm_dataset does)."
            )
        x = {TOKEN_IDS: tf.cast(x[TOKEN_IDS], tf.int32), PADDING_MASK: tf.cast(x[PADDING_MASK], tf.bool)}
        yield x, tf.cast(labels, tf.int32), tf.cast(weights, tf.float32)


_SCORERS = weakref.WeakKeyDictionary()
_WINDOW_SPEC = tf.TensorSpec([None, None], tf.int32)


def _scorer(model):
    """A forward traced once per model: `(x, labels) -> (nll [B, L], top-1 ids [B, L])`.

    The logits (`B x L x vocabulary` floats) never leave the traced function.
    """
    scorer = _SCORERS.get(model)
    if scorer is None:
        owner = weakref.ref(model)  # the cache must not keep the model alive

        @tf.function(
            input_signature=[
                {TOKEN_IDS: _WINDOW_SPEC, PADDING_MASK: tf.TensorSpec([None, None], tf.bool)},
                _WINDOW_SPEC,
            ]
        )
        def scorer(x, labels):
            logits = tf.cast(owner()(x, training=False), tf.float32)
            log_probs = tf.nn.log_softmax(logits, axis=-1)
            nll = -tf.gather(log_probs, labels, axis=-1, batch_dims=2)
            return nll, tf.argmax(logits, axis=-1, output_type=tf.int32)

        _SCORERS[model] = scorer
    return scorer


def token_metrics(models, windows, reference=None, batch_size=4):
    """Perplexity, top-1 accuracy and agreement of several models on the same token windows.

    Every model reads every batch once; only weighted labels count (padding
    and prompts have weight 0).

    Args:
        models: a dict `{name: CausalLM}` (or a single model, named `"model"`).
        windows: a batched `tf.data.Dataset` of `(inputs, labels,
            sample_weight)` (from `make_lm_dataset`), or the dict of arrays of
            `cut_windows`.
        reference: the name of the model the others are compared with (the
            teacher), or `None`.
        batch_size: windows per forward pass when `windows` are arrays (the
            logits take `batch_size x length x vocabulary x 4` bytes).

    Returns:
        `{name: {"perplexity", "nll", "accuracy", "tokens"}}` where `nll` is
        the mean negative log-likelihood in nats per token, `accuracy` the
        share of labels that are the model's top-1 token and `tokens` the
        weighted label count; each model but the reference also has
        `"agreement"`: the share of labels where its top-1 token is the
        reference's.

    Raises:
        ValueError: for an unknown `reference`, unbatched windows or no
            weighted label.

    Example:

    ```python
    heldout = make_lm_dataset(heldout_corpus, teacher, 128, batch_size=4)
    token_metrics({"teacher": teacher, "student": student}, heldout, reference="teacher")
    # SmolLM2 on IMDB windows: {'teacher': {'perplexity': 57.5, 'accuracy': 0.30, ...},
    #  'student': {'perplexity': 108539.2, 'agreement': 0.012, ...}}  (10 blocks cut, not retrained)
    ```
    """
    if not isinstance(models, dict):
        models = {"model": models}
    if reference is not None and reference not in models:
        raise ValueError(f"reference {reference!r} is not one of the models {sorted(models)}.")
    scorers = {name: _scorer(model) for name, model in models.items()}
    meters = {name: {"nll": keras.metrics.Mean(), "accuracy": keras.metrics.Accuracy()} for name in models}
    for name in models:
        if reference is not None and name != reference:
            meters[name]["agreement"] = keras.metrics.Accuracy()
    tokens = 0.0
    for x, labels, weights in _batches(windows, int(batch_size)):
        tokens += float(tf.reduce_sum(weights))
        top1 = {}
        for name, score in scorers.items():
            nll, top1[name] = score(x, labels)
            meters[name]["nll"].update_state(nll, sample_weight=weights)
            meters[name]["accuracy"].update_state(labels, top1[name], sample_weight=weights)
        for name, meter in meters.items():
            if "agreement" in meter:
                meter["agreement"].update_state(top1[reference], top1[name], sample_weight=weights)
    if tokens <= 0:
        raise ValueError("The windows hold no weighted label: nothing to measure.")
    results = {}
    for name, meter in meters.items():
        values = {key: float(metric.result()) for key, metric in meter.items()}
        results[name] = {"perplexity": math.exp(values["nll"]), **values, "tokens": int(round(tokens))}
    return results


def _text_ids(model, text):
    if isinstance(text, str):
        return tokenize(model, text)
    ids = np.asarray(text)
    if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
        raise ValueError(f"Pass a text (str) or a 1-D array of token ids, not an array of shape {ids.shape}.")
    return ids.astype(np.int32)


def perplexity(model, text, window, stride=None, batch_size=4):
    """Sliding-window perplexity of one long text (definition in the module docstring).

    Args:
        model: a KerasHub `CausalLM`.
        text: the text (`str`, tokenized by `kd_tf.lm.tokenize` without
            special tokens) or its token ids.
        window: input tokens per window (at most the model's context length).
        stride: tokens between window starts, `1..window`; default `window`.
        batch_size: windows per forward pass.

    Returns:
        The perplexity (a float) over the text's tokens after the first.

    Raises:
        ValueError: for a text of fewer than 2 tokens or a stride outside
            `1..window`.

    Example:

    ```python
    text = open("tests/data/lm_wikitext2_test_head.txt").read()
    perplexity(teacher, text, window=512, stride=256)
    ```
    """
    ids = _text_ids(model, text)
    if len(ids) < 2:
        raise ValueError(f"The text has {len(ids)} token(s); perplexity needs at least 2.")
    pad_id = _pad_id(model)
    windows = cut_windows(ids, np.ones(len(ids), np.float32), int(window), stride, pad_id=pad_id)
    return token_metrics(model, windows, batch_size=batch_size)["model"]["perplexity"]


def next_token_agreement(student, teacher, windows, batch_size=4):
    """Share of labelled positions where the student's top-1 next token is the teacher's.

    Args:
        student: a KerasHub `CausalLM`.
        teacher: a KerasHub `CausalLM` with the same vocabulary.
        windows: batched windows (`make_lm_dataset`) or `cut_windows` arrays;
            positions with sample weight 0 (padding, prompts) are excluded.
        batch_size: windows per forward pass for arrays.

    Returns:
        The agreement, a float in [0, 1].

    Raises:
        ValueError: for unbatched windows or windows without a weighted label.

    Example:

    ```python
    next_token_agreement(student, teacher, make_lm_dataset(heldout, teacher, 128))
    ```
    """
    results = token_metrics({"teacher": teacher, "student": student}, windows, "teacher", batch_size)
    return results["student"]["agreement"]


def model_size(model):
    """Parameters and weight bytes of a model (each weight once: tied embeddings count once).

    Args:
        model: a Keras model.

    Returns:
        `{"parameters": int, "float32_bytes": 4 * parameters, "weight_bytes":
        the bytes of the weights in their own dtypes}`.

    Example:

    ```python
    model_size(teacher)  # {'parameters': 134515008, 'float32_bytes': 538060032, ...}
    ```
    """
    unique = {id(w): w for w in model.weights}.values()
    parameters = sum(int(np.prod(w.shape)) for w in unique)
    weight_bytes = sum(
        int(np.prod(w.shape)) * np.dtype(keras.backend.standardize_dtype(w.dtype)).itemsize for w in unique
    )
    return {"parameters": parameters, "float32_bytes": 4 * parameters, "weight_bytes": weight_bytes}


@contextlib.contextmanager
def _greedy(model):
    """Generate greedily inside the block; the model's sampler and compiled function come back after."""
    saved = model.sampler, model.generate_function
    model.sampler, model.generate_function = keras_hub.samplers.GreedySampler(), None
    try:
        yield model.make_generate_function()
    finally:
        model.sampler, model.generate_function = saved


def _prompt_ids(model, prompt, separator):
    ids = _text_ids(model, prompt)
    return np.concatenate([[separator_id(model, separator)], ids]).astype(np.int32)


def _generate(generate, prompts, new_tokens, pad_id):
    """Greedy continuations of `new_tokens` ids after each prompt, from one compiled call, no early stop.

    The prompts are right-padded into one `[P, longest + new_tokens]` batch (one
    compilation per model); KerasHub writes only the padded positions of each
    row, so every row continues its own prompt.

    Returns:
        `(full rows [P, longest + new_tokens], continuations: list of [new_tokens] arrays)`.
    """
    length = max(len(ids) for ids in prompts) + new_tokens
    token_ids = np.full((len(prompts), length), pad_id, np.int32)
    mask = np.zeros((len(prompts), length), bool)
    for row, ids in enumerate(prompts):
        token_ids[row, : len(ids)], mask[row, : len(ids)] = ids, True
    out = np.asarray(
        generate({TOKEN_IDS: tf.constant(token_ids), PADDING_MASK: tf.constant(mask)}, None)[TOKEN_IDS]
    )
    return out, [out[row, len(ids) : len(ids) + new_tokens] for row, ids in enumerate(prompts)]


def _text(tokenizer, ids):
    special = set(getattr(tokenizer, "special_token_ids", None) or ())
    kept = [int(i) for i in ids if int(i) not in special]
    if not kept:
        return ""
    text = tokenizer.detokenize(kept)
    text = text.numpy() if hasattr(text, "numpy") else text
    return text.decode("utf-8", errors="replace") if isinstance(text, bytes) else str(text)


def generation_speed(model, prompt, new_tokens=32, runs=3, separator=None):
    """Batch-1 greedy generation speed with KerasHub's KV cache, prompt processing and decoding apart.

    KerasHub's `generate` pads the prompt to `max_length = prompt + new_tokens`,
    runs one forward pass over all `max_length` positions that fills the KV
    cache (the prefill), then decodes one token per step from the cache. Two
    timed calls of the same compiled function (so one compilation) separate the
    two: A generates `new_tokens` after the prompt, B is given A's first
    `max_length - 1` tokens and generates one. Then
    `decode_s_per_token = (A - B) / (new_tokens - 1)` and
    `prefill_s = B - decode_s_per_token`. Times are medians of `runs` calls
    after a warm-up call that compiles (XLA when the model's `jit_compile` is
    on, KerasHub's default).

    Args:
        model: a KerasHub `CausalLM` (its sampler is restored afterwards).
        prompt: the prompt text (or token ids); the separator token is put
            before it, as documents start in training windows.
        new_tokens: tokens to generate, at least 2.
        runs: timed calls of each kind.
        separator: the start token (see `kd_tf.lm.separator_id`).

    Returns:
        A dict: `prompt_tokens`, `new_tokens`, `max_length`, `compile_s` (the
        warm-up call), `generate_s` (A), `tokens_per_s` (`new_tokens / A`,
        what a user waits for), `prefill_s`, `decode_tokens_per_s`.

    Raises:
        ValueError: if `new_tokens < 2` or `runs < 1`.

    Example:

    ```python
    generation_speed(teacher, "The capital of France is", new_tokens=32)["decode_tokens_per_s"]
    ```
    """
    if new_tokens < 2 or runs < 1:
        raise ValueError(
            f"generation_speed needs new_tokens >= 2 and runs >= 1, not {new_tokens} and {runs}."
        )
    prompt_ids = _prompt_ids(model, prompt, separator)
    pad_id = _pad_id(model)
    with _greedy(model) as generate:
        start = time.perf_counter()
        full = _generate(generate, [prompt_ids], new_tokens, pad_id)[0][0]
        compile_s = time.perf_counter() - start

        def median_time(ids, count):
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                _generate(generate, [ids], count, pad_id)
                times.append(time.perf_counter() - start)
            return float(np.median(times))

        many = median_time(prompt_ids, new_tokens)
        one = median_time(full[:-1], 1)
    per_token = max((many - one) / (new_tokens - 1), 1e-12)
    return {
        "prompt_tokens": int(len(prompt_ids)),
        "new_tokens": int(new_tokens),
        "max_length": int(len(full)),
        "compile_s": compile_s,
        "generate_s": many,
        "tokens_per_s": new_tokens / many,
        "prefill_s": max(one - per_token, 0.0),
        "decode_tokens_per_s": 1.0 / per_token,
    }


def side_by_side(models, prompts, new_tokens=24, separator=None):
    """Greedy continuations of fixed prompts by several models, as table rows.

    Each model continues each prompt with exactly `new_tokens` tokens (greedy,
    no early stop; special tokens are dropped from the text), so the rows
    compare like with like.

    Args:
        models: a dict `{name: CausalLM}`, in column order.
        prompts: a list of prompt texts.
        new_tokens: tokens generated per prompt.
        separator: the start token put before each prompt (see
            `kd_tf.lm.separator_id`).

    Returns:
        A list of dicts, one per prompt: `{"prompt": text, name: continuation,
        ...}`, ready for a Markdown table.

    Raises:
        ValueError: if `new_tokens < 1` or there is no prompt.

    Example:

    ```python
    rows = side_by_side({"teacher": teacher, "student": student}, ["The capital of France is"])
    rows[0]["teacher"]  # ' Paris. ...'
    ```
    """
    if new_tokens < 1 or not prompts:
        raise ValueError("side_by_side needs at least one prompt and new_tokens >= 1.")
    rows = [{"prompt": prompt} for prompt in prompts]
    for name, model in models.items():
        tokenizer = _tokenizer_of(model)
        pad_id = _pad_id(tokenizer)
        prompt_ids = [_prompt_ids(model, prompt, separator) for prompt in prompts]
        with _greedy(model) as generate:
            _, continuations = _generate(generate, prompt_ids, new_tokens, pad_id)
        for row, ids in zip(rows, continuations):
            row[name] = _text(tokenizer, ids)
    return rows
