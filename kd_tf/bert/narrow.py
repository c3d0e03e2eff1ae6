"""Narrow and shallow students sliced from a teacher, by measured importance.

`write_student_from_teacher` keeps the teacher's width and copies whole blocks (DistilBERT). A phone
needs a narrower student too (TinyBERT-4 is H312, 4 layers). `write_narrow_student` initialises one of any
width and depth from the teacher:

1. `unit_importance` runs the teacher on real calibration text and measures, over real tokens, how much
   each unit writes: each hidden dimension (mean |value| of the LayerNorm outputs that form the residual
   stream: the embeddings and every block output), each attention head (mean norm of what it adds to the
   residual stream, its context times its rows of the output projection), each head dimension (query x key
   magnitude for the scores; value magnitude times its output row's norm), and each feed-forward neuron
   (mean |GELU activation| times its output row's norm).
2. `narrow_encoder` keeps the most important units and slices every weight down to them: the student's
   weights are sub-matrices of the teacher's. Where heads keep fewer dimensions than the teacher's, the
   query is scaled by `sqrt(d_student / d_teacher)` so the kept dimensions' share of each attention score
   keeps its scale.

**Why slicing, not an SVD or PCA projection.** kd-tf's BERT is post-LayerNorm: every block ends in a
LayerNorm on the residual stream itself, with an elementwise gain and bias per hidden dimension. A subset of
coordinates maps those gains, biases and every residual connection onto the student exactly; a rotation
(PCA of the hidden states, SVD of the weights) mixes the coordinates, so the teacher's elementwise LayerNorms
have no counterpart in the rotated basis (SliceGPT's rotations need pre-LayerNorm / RMSNorm models for this
reason). Slicing by activation importance is the width-pruning step of Minitron (Muralidharan et al., 2024,
"Compact Language Models via Pruning and Knowledge Distillation"), which then retrains by distillation, as
kd-tf does.

The student folder records what was kept (`read_encoder_metadata(path)["narrowed"]`). Its hidden dimensions
are a subset of the teacher's, so `narrow_projection(path)` gives the `kd_tf.distill.FeatureMatch` projection
(student width -> teacher width) that places each student dimension back where it came from: hidden-state
distillation then starts from the correspondence the initialisation made, not from a random map.
"""

from __future__ import annotations

import math
import os

import numpy as np
import tensorflow as tf

from kd_tf.bert.encoder import INPUT_KEYS, BertConfig, BertEncoder, padding_bias
from kd_tf.bert.hub_format import (
    check_layer_indices,
    load_bert_encoder,
    read_encoder_metadata,
    save_bert_encoder,
)

NARROWED = "narrowed"
"""The key of the narrowing record in a student's `kd_tf_bert.json`."""


def _check_inputs(inputs):
    missing = [k for k in INPUT_KEYS if k not in inputs]
    if missing:
        raise ValueError(
            f"calibration inputs lack {missing}: pass what a BERT preprocessor returns for real texts, "
            f"e.g. HubPreprocessor(folder, seq_length=128)(tf.constant(texts))."
        )
    inputs = {k: np.asarray(inputs[k], np.int32) for k in INPUT_KEYS}
    if inputs["input_mask"].ndim != 2 or not inputs["input_mask"].sum():
        raise ValueError("calibration inputs hold no real token: pass a batch [N, T] of tokenized texts.")
    return inputs


def unit_importance(encoder, inputs, batch_size=16):
    """How much each hidden dimension, head, head dimension and feed-forward neuron writes, on real inputs.

    Every value is a mean over the real tokens (input_mask = 1) of `inputs`; see the module docstring.

    Args:
        encoder: a `kd_tf.bert.BertEncoder` (e.g. `load_bert_encoder(teacher_folder)`).
        inputs: the encoder input dict of real tokenized text, int32 `[N, T]` arrays.
        batch_size: examples run at a time.

    Returns:
        A dict of float64 arrays: `hidden` `[H]`, `heads` `[L, A]`, `query_key` and `value` `[L, A, d]`
        (d = H / A), `intermediate` `[L, I]`.

    Raises:
        ValueError: if `inputs` lacks a key or holds no real token.

    Example:
    ```python
    importance = unit_importance(load_bert_encoder("/tmp/minilm"), pre(tf.constant(reviews[:64])))
    importance["heads"].shape  # (6, 12)
    ```
    """
    inputs = _check_inputs(inputs)
    config = encoder.config
    layers, heads, head_size = config.num_layers, config.num_heads, config.head_size
    sums = {
        "hidden": np.zeros(config.hidden_size),
        "heads": np.zeros((layers, heads)),
        "query": np.zeros((layers, config.hidden_size)),
        "key": np.zeros((layers, config.hidden_size)),
        "value": np.zeros((layers, config.hidden_size)),
        "intermediate": np.zeros((layers, config.intermediate_size)),
    }

    def masked_sum(x, mask):
        return tf.reduce_sum(tf.abs(x) * mask[:, :, tf.newaxis], axis=[0, 1]).numpy()

    for start in range(0, len(inputs["input_mask"]), batch_size):
        batch = {k: v[start : start + batch_size] for k, v in inputs.items()}
        mask = tf.constant(batch["input_mask"], tf.float32)
        x = encoder.embeddings(tf.constant(batch["input_word_ids"]), tf.constant(batch["input_type_ids"]))
        sums["hidden"] += masked_sum(x, mask)
        bias = padding_bias(mask)
        for layer, block in enumerate(encoder.blocks):
            parts = block.internals(x, bias)
            for name in ("query", "key", "value", "intermediate"):
                sums[name][layer] += masked_sum(parts[name], mask)
            context = tf.reshape(parts["context"], [tf.shape(x)[0], tf.shape(x)[1], heads, head_size])
            rows = tf.reshape(block.attention_output.kernel, [heads, head_size, config.hidden_size])
            written = tf.norm(tf.einsum("btad,adh->btah", context, rows), axis=-1)  # [B, T, A]
            sums["heads"][layer] += tf.reduce_sum(written * mask[:, :, tf.newaxis], axis=[0, 1]).numpy()
            x = parts["output"]
            sums["hidden"] += masked_sum(x, mask)
    tokens = float(inputs["input_mask"].sum())
    means = {k: v / tokens for k, v in sums.items()}
    output_rows = np.stack(
        [np.linalg.norm(b.attention_output.kernel.numpy(), axis=1) for b in encoder.blocks]
    )
    neuron_rows = np.stack([np.linalg.norm(b.output_dense.kernel.numpy(), axis=1) for b in encoder.blocks])
    per_head = (layers, heads, head_size)
    return {
        "hidden": means["hidden"] / (layers + 1),
        "heads": means["heads"],
        "query_key": (means["query"] * means["key"]).reshape(per_head),
        "value": (means["value"] * output_rows).reshape(per_head),
        "intermediate": means["intermediate"] * neuron_rows,
    }


def _top(importance, n):
    """Indices of the `n` largest values (ties: the lower index), in increasing order."""
    return np.sort(np.argsort(-np.asarray(importance), kind="stable")[:n])


def _student_config(teacher, hidden_size, num_heads, intermediate_size, max_position_embeddings, layers):
    t = teacher.config
    if num_heads is None:
        if hidden_size % t.head_size == 0 and hidden_size // t.head_size <= t.num_heads:
            num_heads = hidden_size // t.head_size  # whole teacher heads
        elif hidden_size % t.num_heads == 0:
            num_heads = t.num_heads  # every head, each narrower
        else:
            raise ValueError(
                f"choose num_heads for hidden_size={hidden_size}: it divides neither by the teacher's head "
                f"size {t.head_size} nor by its {t.num_heads} heads."
            )
    if intermediate_size is None:
        intermediate_size = max(1, round(t.intermediate_size * hidden_size / t.hidden_size))
    if max_position_embeddings is None:
        max_position_embeddings = t.max_position_embeddings
    limits = {
        "hidden_size": (hidden_size, t.hidden_size),
        "num_heads": (num_heads, t.num_heads),
        "intermediate_size": (intermediate_size, t.intermediate_size),
        "max_position_embeddings": (max_position_embeddings, t.max_position_embeddings),
    }
    for name, (value, teacher_value) in limits.items():
        if not isinstance(value, (int, np.integer)) or not 0 < value <= teacher_value:
            raise ValueError(
                f"{name}={value!r}: a student sliced from the teacher needs 1 to {teacher_value} (the "
                f"teacher's {name})."
            )
    config = BertConfig.from_dict(
        {
            **t.to_dict(),
            "hidden_size": int(hidden_size),
            "num_heads": int(num_heads),
            "intermediate_size": int(intermediate_size),
            "max_position_embeddings": int(max_position_embeddings),
            "num_layers": len(layers),
        }
    )
    if config.head_size > t.head_size:
        raise ValueError(
            f"hidden_size={hidden_size} with num_heads={num_heads} gives heads of {config.head_size} "
            f"dimensions, more than the teacher's {t.head_size}: use at least "
            f"{math.ceil(hidden_size / t.head_size)} heads."
        )
    return config


def narrow_encoder(
    teacher,
    inputs,
    layers,
    hidden_size,
    num_heads=None,
    intermediate_size=None,
    max_position_embeddings=None,
    batch_size=16,
):
    """Slices a narrower, shallower student out of a teacher `BertEncoder` (see the module docstring).

    With the teacher's sizes it copies the chosen blocks exactly, as `write_student_from_teacher` does.

    Args:
        teacher: a `kd_tf.bert.BertEncoder`.
        inputs: the encoder input dict of real tokenized text (int32 `[N, T]`) to measure importance on;
            a few dozen texts of the task suffice.
        layers: the teacher blocks the student's blocks start from, in order (e.g. `[0, 2, 3, 5]`, the
            teacher layers `kd_tf.distill.layer_map(6, 4)` matches the student's to).
        hidden_size: the student's width H (at most the teacher's).
        num_heads: the student's heads; by default whole teacher heads (H / teacher head size) when they
            fit, else all the teacher's heads, each narrower.
        intermediate_size: the student's feed-forward width; by default the teacher's ratio (4H in BERT).
        max_position_embeddings: the longest input the student takes (e.g. 128 on a phone); by default the
            teacher's. The first positions are kept.
        batch_size: examples run at a time to measure importance.

    Returns:
        `(student, record)`: a `BertEncoder` and a dict of the kept units (`layers`, `hidden_dims`,
        `heads`, `query_key_dims`, `value_dims`, `intermediate_units`, `teacher_config`).

    Raises:
        ValueError: for sizes the teacher cannot give (larger than its own, heads wider than its heads),
            bad `layers` or bad `inputs`.

    Example:
    ```python
    student, record = narrow_encoder(teacher, inputs, layers=[0, 2, 3, 5], hidden_size=256)
    student.config.num_heads, len(record["hidden_dims"])  # (8, 256)
    ```
    """
    layers = check_layer_indices(layers, teacher.config.num_layers, teacher.name)
    config = _student_config(
        teacher, hidden_size, num_heads, intermediate_size, max_position_embeddings, layers
    )
    importance = unit_importance(teacher, inputs, batch_size=batch_size)
    t = teacher.config
    hidden = _top(importance["hidden"], config.hidden_size)
    record = {
        "layers": layers,
        "hidden_dims": hidden.tolist(),
        "heads": [],
        "query_key_dims": [],
        "value_dims": [],
        "intermediate_units": [],
        "teacher_config": t.to_dict(),
    }
    student = BertEncoder(config)
    t_emb, s_emb = teacher.embeddings, student.embeddings
    s_emb.word_embeddings.assign(t_emb.word_embeddings.numpy()[:, hidden])
    s_emb.position_embeddings.assign(
        t_emb.position_embeddings.numpy()[: config.max_position_embeddings, hidden]
    )
    s_emb.type_embeddings.assign(t_emb.type_embeddings.numpy()[:, hidden])
    _copy_layer_norm(t_emb.layer_norm, s_emb.layer_norm, hidden)
    scale = math.sqrt(config.head_size / t.head_size)
    for s_block, layer in zip(student.blocks, layers):
        t_block = teacher.blocks[layer]
        heads = _top(importance["heads"][layer], config.num_heads)
        query_key = [
            h * t.head_size + _top(importance["query_key"][layer, h], config.head_size) for h in heads
        ]
        value = [h * t.head_size + _top(importance["value"][layer, h], config.head_size) for h in heads]
        units = _top(importance["intermediate"][layer], config.intermediate_size)
        query_key, value = np.concatenate(query_key), np.concatenate(value)
        _copy_dense(t_block.query, s_block.query, hidden, query_key, scale)
        _copy_dense(t_block.key, s_block.key, hidden, query_key)
        _copy_dense(t_block.value, s_block.value, hidden, value)
        _copy_dense(t_block.attention_output, s_block.attention_output, value, hidden)
        _copy_layer_norm(t_block.attention_layer_norm, s_block.attention_layer_norm, hidden)
        _copy_dense(t_block.intermediate, s_block.intermediate, hidden, units)
        _copy_dense(t_block.output_dense, s_block.output_dense, units, hidden)
        _copy_layer_norm(t_block.output_layer_norm, s_block.output_layer_norm, hidden)
        record["heads"].append(heads.tolist())
        record["query_key_dims"].append(query_key.tolist())
        record["value_dims"].append(value.tolist())
        record["intermediate_units"].append(units.tolist())
    _copy_dense(teacher.pooler, student.pooler, hidden, hidden)
    return student, record


def _copy_dense(source, target, rows, columns, scale=1.0):
    target.kernel.assign(source.kernel.numpy()[np.ix_(rows, columns)] * scale)
    target.bias.assign(source.bias.numpy()[columns] * scale)


def _copy_layer_norm(source, target, dims):
    target.gamma.assign(source.gamma.numpy()[dims])
    target.beta.assign(source.beta.numpy()[dims])


def write_narrow_student(
    teacher_path,
    path,
    layers,
    hidden_size,
    calibration_inputs,
    num_heads=None,
    intermediate_size=None,
    max_position_embeddings=None,
):
    """Writes a narrower, shallower student sliced from a teacher, in TF Hub format.

    Args:
        teacher_path: an encoder folder written by `kd_tf.bert.hub_format` (e.g. the fine-tuned teacher).
        path: the folder to create.
        layers: the teacher blocks the student's blocks start from (see `narrow_encoder`).
        hidden_size: the student's width.
        calibration_inputs: the encoder input dict of real tokenized text of the task (int32 `[N, T]`).
        num_heads: see `narrow_encoder`.
        intermediate_size: see `narrow_encoder`.
        max_position_embeddings: see `narrow_encoder`.

    Returns:
        `path`.

    Raises:
        ValueError: see `narrow_encoder`.
        FileExistsError: if `path` holds files already.

    Example:
    ```python
    inputs = HubPreprocessor(pre_folder, seq_length=128)(tf.constant(reviews[:64]))
    write_narrow_student("/tmp/minilm/encoder", "/tmp/h256", layers=[0, 2, 3, 5], hidden_size=256,
                         calibration_inputs=inputs)  # '/tmp/h256'
    ```
    """
    student, record = narrow_encoder(
        load_bert_encoder(teacher_path),
        calibration_inputs,
        layers,
        hidden_size,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
    )
    record = {"teacher": os.fspath(teacher_path), **record}
    return save_bert_encoder(student, path, extra_metadata={NARROWED: record})


def narrow_projection(student_path):
    """The `FeatureMatch` projection kernel that maps a narrowed student's hidden states to the teacher's.

    Row `i` is one-hot at the teacher dimension that student dimension `i` was sliced from, so a student
    state maps onto its teacher dimensions and the dropped ones start at zero. Assign it to the projector of
    each hidden-state `FeatureMatch` once the `Distiller` is built.

    Args:
        student_path: a folder written by `write_narrow_student` (or pruned from one).

    Returns:
        float32 `[student hidden size, teacher hidden size]`.

    Raises:
        ValueError: if the folder has no narrowing record.

    Example:
    ```python
    matches = layer_map(6, 4, feature="encoder/encoder_outputs", mask="input_mask")
    distiller = Distiller(student, teacher, features=matches)
    for match in matches:
        match.projector.kernel.assign(narrow_projection("/tmp/h256"))
    ```
    """
    record = read_encoder_metadata(student_path).get(NARROWED)
    if record is None:
        raise ValueError(
            f"{student_path} was not written by write_narrow_student, so it has no record of the teacher "
            f"dimensions it keeps; keep the projection's default initialisation."
        )
    dims = record["hidden_dims"]
    kernel = np.zeros((len(dims), record["teacher_config"]["hidden_size"]), np.float32)
    kernel[np.arange(len(dims)), dims] = 1.0
    return kernel


__all__ = ["NARROWED", "narrow_encoder", "narrow_projection", "unit_importance", "write_narrow_student"]
