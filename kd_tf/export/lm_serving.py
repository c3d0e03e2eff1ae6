"""The serving SavedModel of a causal LM: prompts in, greedy generated text out, all in one graph.

`write_generation_saved_model` writes, with Keras's `ExportArchive`, a SavedModel whose endpoint
`generate` (also the `serving_default` signature) takes a batch of prompt strings and returns
`{"text": [batch] strings}`: each prompt followed by its greedy continuation, exactly what the Keras
model's `generate(prompts, max_length)` returns with a greedy sampler. Inside the graph: KerasHub's
TensorFlow tokenizer and packing (start token, right padding to `max_length`), KerasHub's
`generate_step` (prefill, then one step per token from the KV cache, stopping when every prompt
produced an end token), and detokenization without special tokens. The graph is not XLA-compiled:
on CPU servers XLA made KerasHub's generation slower here (see `benchmarks/lm_eval_results.md`).

A server loads it with TensorFlow and TensorFlow Text (`import tensorflow_text` registers the
`RegexSplitWithOffsets` op of the byte-pair tokenizer) through `tf.saved_model.load`, or with
TensorFlow Serving built with TensorFlow Text's ops; neither KerasHub nor kd-tf is needed to run it.
"""

from __future__ import annotations

import os

__all__ = ["GENERATE_ENDPOINT", "stop_token_ids", "write_generation_saved_model"]

GENERATE_ENDPOINT = "generate"


def stop_token_ids(model):
    """The ids that end generation, as KerasHub's `generate(stop_token_ids="auto")` chooses them.

    Args:
        model: a KerasHub `CausalLM` with a preprocessor.

    Returns:
        A list of ints: the tokenizer's end token (and its second end token
        where it has one, as Llama 3 does).

    Example:

    ```python
    stop_token_ids(student)  # [2], SmolLM2's <|im_end|>
    ```
    """
    tokenizer = model.preprocessor.tokenizer
    ids = [int(tokenizer.end_token_id)]
    if getattr(tokenizer, "end_token2_id", None) is not None:
        ids.append(int(tokenizer.end_token2_id))
    return ids


def _detokenize(tokenizer, generated):
    """Generated `{token_ids, padding_mask}` to strings, without padding and special tokens (in graph)."""
    import tensorflow as tf

    token_ids = generated["token_ids"]
    keep = tf.cast(generated["padding_mask"], tf.bool)
    for special in tokenizer.special_token_ids:
        keep &= tf.not_equal(token_ids, special)
    return tokenizer.detokenize(tf.ragged.boolean_mask(token_ids, keep))


def write_generation_saved_model(model, path, max_length):
    """Writes the serving SavedModel: `[batch]` prompt strings in, `{"text": [batch]}` strings out.

    Generation is greedy and fills `max_length` tokens (prompt, with its
    start token, plus continuation) unless every prompt ends earlier with an
    end token; a prompt longer than `max_length` tokens is truncated to its
    first `max_length` tokens.

    Args:
        model: a KerasHub `CausalLM` with its preprocessor attached.
        path: the folder to write.
        max_length: tokens per generated sequence, prompt included.

    Returns:
        `path`.

    Raises:
        ValueError: if the model has no preprocessor.

    Example:

    ```python
    write_generation_saved_model(student, "export/serving", max_length=64)
    served = tf.saved_model.load("export/serving")
    served.generate(tf.constant(["The film was"]))["text"]  # [b'The film was a ...']
    ```
    """
    import keras
    import tensorflow as tf

    from kd_tf.lm.evaluate import _greedy

    if getattr(model, "preprocessor", None) is None:
        raise ValueError(
            "The serving model tokenizes inside its graph: attach the model's preprocessor "
            "(model.preprocessor = preprocessor) before exporting."
        )
    preprocessor = model.preprocessor
    stop = stop_token_ids(model)

    def generate(prompts):
        with _greedy(model):  # inside the traced function: every trace is greedy
            inputs = preprocessor.generate_preprocess(prompts, sequence_length=int(max_length))
            generated = model.generate_step(inputs, stop_token_ids=stop)
        return {"text": _detokenize(preprocessor.tokenizer, generated)}

    if not preprocessor.built:  # Keras tracks built layers only; KerasHub builds it on first use
        preprocessor.build(None)
    archive = keras.export.ExportArchive()
    # Only the preprocessor, for its tokenizer's tables: tracking the model would store every weight
    # twice (keras-team/keras#23553); the weights the endpoint uses are saved without it.
    archive.track(preprocessor)
    archive.add_endpoint(
        GENERATE_ENDPOINT, generate, input_signature=[tf.TensorSpec([None], tf.string, name="prompts")]
    )
    archive.write_out(os.fspath(path), verbose=False)
    return path
