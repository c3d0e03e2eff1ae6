"""Write BERT encoders and preprocessors as TF-Hub-format SavedModels.

The folders written here have exactly the interface of the published TF Hub
BERT models, so the rest of kd-tf (and any TF Hub user) cannot tell them apart:

* an **encoder**: `obj(inputs, training=False)` on the dict of int32
  `input_word_ids`, `input_mask`, `input_type_ids` returns `pooled_output`,
  `sequence_output`, `encoder_outputs` and `default`; the root carries the
  reusable-SavedModel attributes `variables`, `trainable_variables` and
  `regularization_losses`; dropout is active only with `training=True`.
* a **preprocessor**: `obj(strings)` returns the encoder inputs at sequence
  length 128; `obj.tokenize(strings)` returns ragged `[batch, words,
  wordpieces]` ids; `obj.bert_pack_inputs(segments, seq_length=N)` packs one
  to three tokenized segments at any length; the vocabulary is an asset, so
  the folder can be moved.

Writers:
    `write_bert_encoder`: random initialisation at any size.
    `convert_hf_bert`: a Hugging Face BERT checkpoint folder (config.json,
        model.safetensors, vocab.txt), encoder and preprocessor side by side.
    `write_student_from_teacher`: a student that copies a teacher's
        embeddings, chosen transformer layers and pooler.
    `write_pruned_encoder`: an encoder with a smaller vocabulary, its word
        embeddings the kept rows of another's (see `kd_tf.bert.vocabulary`).
    `kd_tf.bert.narrow.write_narrow_student`: a narrower, shallower student
        sliced from a teacher.
    `write_bert_preprocessor`: the bert_en_uncased_preprocess/3 interface.

Each encoder folder also holds `assets.extra/kd_tf_bert.json` (the
`BertConfig` and the order of the saved variables), which lets
`load_bert_encoder` rebuild the Keras model from any folder written here.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import numpy as np
import tensorflow as tf

from kd_tf.bert.encoder import DEFAULT_SEQ_LENGTH, INPUT_KEYS, SPECIAL_TOKENS, BertConfig, BertEncoder

METADATA_FILE = os.path.join("assets.extra", "kd_tf_bert.json")
MAX_SEGMENTS = 3
_OWN_METADATA = ("format", "config", "variables")
"""The tokens every BERT WordPiece vocabulary needs: padding, unknown, start, separator, mask."""


# ----------------------------------------------------------------------------
# Writing a finished folder safely.
# ----------------------------------------------------------------------------
def write_atomically(path, write_fn):
    """Runs `write_fn(tmp_dir)` and moves the result to `path` only on success.

    A failed write leaves no folder at `path` that looks complete.
    """
    path = os.fspath(path)
    parent = os.path.dirname(os.path.abspath(path)) or "."
    os.makedirs(parent, exist_ok=True)
    if os.path.exists(path) and os.listdir(path):
        raise FileExistsError(
            f"{path} already exists and is not empty; choose a new folder or delete it first."
        )
    tmp = tempfile.mkdtemp(prefix=".tmp-", dir=parent)
    try:
        write_fn(tmp)
        if os.path.exists(path):
            os.rmdir(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


# ----------------------------------------------------------------------------
# Encoders.
# ----------------------------------------------------------------------------
def _input_spec():
    return {k: tf.TensorSpec([None, None], tf.int32, name=k) for k in INPUT_KEYS}


def save_bert_encoder(encoder: BertEncoder, path, extra_metadata=None):
    """Saves a Keras `BertEncoder` as a TF-Hub-format (reusable) SavedModel.

    Args:
        encoder: a `kd_tf.bert.BertEncoder`, e.g. from `load_bert_encoder`
            with the weights of a fine-tuned `HubEncoder`.
        path: folder to create (must not exist or be empty).
        extra_metadata: optional JSON-serialisable dict merged into the
            folder's `kd_tf_bert.json` (e.g. the `"narrowed"` record of
            `kd_tf.bert.narrow.write_narrow_student`); read it back with
            `read_encoder_metadata`.

    Returns:
        `path`.

    Raises:
        FileExistsError: if `path` holds files already.

    Example:
    ```python
    hub = find_encoder(fine_tuned_classifier)
    save_bert_encoder(load_bert_encoder(hub.handle, variables=hub.saved_variables),
                      "/tmp/fine_tuned_encoder")
    # '/tmp/fine_tuned_encoder'
    ```
    """
    variables = [v.value for v in encoder.variables]
    trainable = [v.value for v in encoder.trainable_variables]

    root = tf.__internal__.tracking.AutoTrackable()
    root.variables = variables
    root.trainable_variables = trainable
    root.regularization_losses = []

    @tf.function
    def call(inputs, training=False):
        return encoder(inputs, training=training)

    for training in (False, True):
        call.get_concrete_function(_input_spec(), training=training)
    root.__call__ = call

    @tf.function(input_signature=[_input_spec()])
    def serving(inputs):
        # Signatures take flat dicts: encoder_outputs becomes encoder_outputs_<i>.
        outputs = dict(encoder(inputs, training=False))
        for i, layer_output in enumerate(outputs.pop("encoder_outputs")):
            outputs[f"encoder_outputs_{i}"] = layer_output
        return outputs

    def write(tmp):
        tf.saved_model.save(root, tmp, signatures={"serving_default": serving})
        os.makedirs(os.path.join(tmp, "assets.extra"), exist_ok=True)
        with open(os.path.join(tmp, METADATA_FILE), "w") as f:
            json.dump(
                {
                    **(extra_metadata or {}),
                    "format": "kd_tf.bert_encoder/1",
                    "config": encoder.config.to_dict(),
                    "variables": [v.path for v in encoder.variables],
                },
                f,
                indent=1,
            )

    return write_atomically(path, write)


def write_bert_encoder(
    path,
    num_layers,
    hidden_size,
    num_heads,
    intermediate_size,
    vocab_size,
    max_position_embeddings=512,
    type_vocab_size=2,
    dropout_rate=0.1,
    attention_dropout_rate=0.1,
    seed=None,
):
    """Writes a randomly initialised BERT encoder in TF Hub format.

    Args:
        path: folder to create (must not exist or be empty).
        num_layers: transformer blocks L.
        hidden_size: width H.
        num_heads: attention heads A (must divide H).
        intermediate_size: feed-forward width (4H in BERT).
        vocab_size: size of the WordPiece vocabulary it will be fed.
        max_position_embeddings: longest sequence it accepts.
        type_vocab_size: number of segment ids.
        dropout_rate: hidden dropout, active only with `training=True`.
        attention_dropout_rate: dropout on attention probabilities.
        seed: int for reproducible weights.

    Returns:
        `path`.

    Raises:
        ValueError: on impossible sizes.
        FileExistsError: if `path` holds files already.

    Example:
    ```python
    write_bert_encoder("/tmp/tiny_bert", num_layers=2, hidden_size=32,
                       num_heads=2, intermediate_size=64, vocab_size=30522)
    # '/tmp/tiny_bert'
    ```
    """
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        num_layers=num_layers,
        num_heads=num_heads,
        intermediate_size=intermediate_size,
        max_position_embeddings=max_position_embeddings,
        type_vocab_size=type_vocab_size,
        dropout_rate=dropout_rate,
        attention_dropout_rate=attention_dropout_rate,
    )
    if seed is not None:
        import keras

        keras.utils.set_random_seed(seed)
    return save_bert_encoder(BertEncoder(config), path)


def is_kd_tf_encoder(path):
    """Whether `path` is an encoder folder written by this module (so `load_bert_encoder` can rebuild it).

    Example:
    ```python
    is_kd_tf_encoder("/tmp/tiny_bert")  # True
    ```
    """
    return isinstance(path, (str, os.PathLike)) and os.path.exists(
        os.path.join(os.fspath(path), METADATA_FILE)
    )


def read_encoder_metadata(path):
    """Returns the kd-tf metadata of an encoder folder written by this module.

    Raises:
        ValueError: if `path` was not written by `kd_tf.bert.hub_format` (for
            example a published TF Hub model), naming the file looked for.
    """
    meta_path = os.path.join(os.fspath(path), METADATA_FILE)
    if not is_kd_tf_encoder(path):
        raise ValueError(
            f"{path} has no {METADATA_FILE}: it was not written by "
            f"kd_tf.bert.hub_format, so its architecture cannot be rebuilt. Use an "
            f"encoder written by write_bert_encoder, convert_hf_bert, "
            f"write_student_from_teacher, write_pruned_encoder or write_narrow_student."
        )
    with open(meta_path) as f:
        return json.load(f)


def load_bert_encoder(path, variables=None):
    """Rebuilds the Keras `BertEncoder` of a folder written by this module.

    Args:
        path: an encoder folder written by `kd_tf.bert.hub_format`.
        variables: optional list of variables (in the saved order) to take the
            weights from instead of the folder's, for example the weights of a
            `HubEncoder` after fine-tuning.

    Returns:
        A `kd_tf.bert.BertEncoder` holding the weights.

    Raises:
        ValueError: if the folder was not written by kd-tf or a weight's shape
            differs.

    Example:
    ```python
    encoder = load_bert_encoder("/tmp/tiny_bert")
    encoder.config.num_layers  # 2
    ```
    """
    meta = read_encoder_metadata(path)
    encoder = BertEncoder(BertConfig.from_dict(meta["config"]))
    if variables is None:
        variables = tf.saved_model.load(os.fspath(path)).variables
    assign_weights(encoder.variables, [np.asarray(v) for v in variables], str(path))
    return encoder


def assign_weights(targets, values, source):
    if len(targets) != len(values):
        raise ValueError(
            f"{source}: {len(values)} saved weights for {len(targets)} in the "
            f"model; the folder does not match its kd_tf_bert.json."
        )
    for target, value in zip(targets, values):
        if tuple(target.shape) != tuple(value.shape):
            raise ValueError(
                f"{source}: weight {target.path} has shape {tuple(value.shape)}, "
                f"expected {tuple(target.shape)}."
            )
        target.assign(value)


def check_layer_indices(layers, num_layers, teacher_path):
    """Checks the teacher blocks a student keeps.

    Args:
        layers: block indices, in the student's order.
        num_layers: the teacher's number of blocks.
        teacher_path: the teacher's folder, named in the error.

    Returns:
        `layers` as a list of int.

    Raises:
        ValueError: if `layers` is empty, out of range or repeats an index.

    Example:
    ```python
    check_layer_indices([1, 4], 6, "/tmp/minilm")  # [1, 4]
    ```
    """
    layers = list(layers)
    if (
        not layers
        or any(not isinstance(i, (int, np.integer)) or not 0 <= i < num_layers for i in layers)
        or len(set(layers)) != len(layers)
    ):
        raise ValueError(
            f"layers={layers} must be distinct block indices in [0, {num_layers - 1}] "
            f"of the teacher {teacher_path} ({num_layers} layers)."
        )
    return [int(i) for i in layers]


def write_student_from_teacher(teacher_path, path, layers):
    """Writes a student that copies a teacher's embeddings, layers and pooler.

    The article's first step ("initialise the student so that its parameters
    relate to the teacher's"), as DistilBERT does: the student keeps the
    teacher's width and embeddings and a subset of its transformer blocks.

    Args:
        teacher_path: an encoder folder written by `kd_tf.bert.hub_format`.
        path: folder to create.
        layers: indices of the teacher's blocks to keep, in order, e.g.
            `[0, 2, 4]` ("every other layer") or `[1, 4]`.

    Returns:
        `path`.

    Raises:
        ValueError: if `layers` is empty, out of range or repeats an index.

    Example:
    ```python
    write_student_from_teacher("/tmp/minilm", "/tmp/student", layers=[1, 4])  # '/tmp/student'
    ```
    """
    teacher = load_bert_encoder(teacher_path)
    layers = check_layer_indices(layers, teacher.config.num_layers, teacher_path)
    config = BertConfig.from_dict({**teacher.config.to_dict(), "num_layers": len(layers)})
    student = BertEncoder(config)
    assign_weights(
        student.embeddings.variables, [v.numpy() for v in teacher.embeddings.variables], str(teacher_path)
    )
    for s_block, t_index in zip(student.blocks, layers):
        assign_weights(
            s_block.variables, [v.numpy() for v in teacher.blocks[t_index].variables], str(teacher_path)
        )
    assign_weights(student.pooler.variables, [v.numpy() for v in teacher.pooler.variables], str(teacher_path))
    return save_bert_encoder(student, path)


def write_pruned_encoder(encoder_path, path, kept_ids):
    """Writes an encoder with a smaller vocabulary: the kept rows of another's word embeddings.

    New token id `i` gets row `kept_ids[i]` of the source's word-embedding
    table, bit for bit; every other weight is copied unchanged. Paired with a
    preprocessor on the kept tokens (`kd_tf.bert.vocabulary.write_pruned_bert`
    writes both), a text made of kept tokens gives exactly the source's
    outputs. The source's extra metadata (e.g. its `"narrowed"` record) is
    kept.

    Args:
        encoder_path: an encoder folder written by `kd_tf.bert.hub_format`
            (a teacher, a student from `write_student_from_teacher`, ...).
        path: folder to create.
        kept_ids: the source ids to keep, in their new order (e.g.
            `PrunedVocabulary.kept_ids`); distinct integers in
            `[0, vocab_size)`.

    Returns:
        `path`.

    Raises:
        ValueError: if `kept_ids` is empty, repeats an id or leaves the
            source's vocabulary, naming the first bad id.
        FileExistsError: if `path` holds files already.

    Example:
    ```python
    write_pruned_encoder("/tmp/student", "/tmp/student_8k", pruned.kept_ids)  # '/tmp/student_8k'
    ```
    """
    source = load_bert_encoder(encoder_path)
    vocab_size = source.config.vocab_size
    kept = np.asarray(kept_ids)
    if kept.ndim != 1 or not len(kept) or not np.issubdtype(kept.dtype, np.integer):
        raise ValueError(
            f"kept_ids must be a non-empty list of token ids of {encoder_path}, got {kept_ids!r:.80}."
        )
    bad = kept[(kept < 0) | (kept >= vocab_size)]
    if len(bad):
        raise ValueError(
            f"kept_ids holds {int(bad[0])}, outside the vocabulary of {encoder_path} "
            f"(ids 0 to {vocab_size - 1}); prune the vocabulary the encoder was trained on."
        )
    values, first = np.unique(kept, return_index=True)
    if len(values) != len(kept):
        repeated = kept[np.setdiff1d(np.arange(len(kept)), first)[0]]
        raise ValueError(f"kept_ids repeats the id {int(repeated)}; give each kept token once.")
    pruned = BertEncoder(BertConfig.from_dict({**source.config.to_dict(), "vocab_size": len(kept)}))
    word_embeddings = source.embeddings.word_embeddings.path
    assign_weights(
        pruned.variables,
        [v.numpy()[kept] if v.path == word_embeddings else v.numpy() for v in source.variables],
        str(encoder_path),
    )
    extra = {k: v for k, v in read_encoder_metadata(encoder_path).items() if k not in _OWN_METADATA}
    return save_bert_encoder(pruned, path, extra_metadata=extra)


# ----------------------------------------------------------------------------
# Preprocessors.
# ----------------------------------------------------------------------------
def _read_special_ids(vocab_file):
    with open(vocab_file, encoding="utf-8") as f:
        vocab = [line.rstrip("\n") for line in f]
    index = {token: i for i, token in enumerate(vocab)}
    missing = [t for t in SPECIAL_TOKENS if t not in index]
    if missing:
        raise ValueError(
            f"{vocab_file} lacks the BERT special tokens {missing}; use a BERT WordPiece vocabulary."
        )
    return len(vocab), {
        "padding_id": index["[PAD]"],
        "start_of_sequence_id": index["[CLS]"],
        "end_of_segment_id": index["[SEP]"],
        "mask_id": index["[MASK]"],
        "unk_id": index["[UNK]"],
    }


def write_bert_preprocessor(path, vocab_file, lower_case=True, default_seq_length=DEFAULT_SEQ_LENGTH):
    """Writes a BERT preprocessor with the bert_en_uncased_preprocess/3 interface.

    Args:
        path: folder to create.
        vocab_file: WordPiece vocabulary, one token a line, with `[PAD]`,
            `[UNK]`, `[CLS]`, `[SEP]` and `[MASK]`. It is copied into the
            SavedModel as an asset.
        lower_case: lower-case and strip accents before WordPiece (uncased
            models).
        default_seq_length: sequence length of the plain call.

    Returns:
        `path`.

    Raises:
        FileNotFoundError: if `vocab_file` does not exist.
        ValueError: if a special token is missing.

    Example:
    ```python
    write_bert_preprocessor("/tmp/pre", minilm_checkpoint_dir() + "/vocab.txt")  # '/tmp/pre'
    ```
    """
    import tensorflow_text as text

    vocab_file = os.fspath(vocab_file)
    if not os.path.exists(vocab_file):
        raise FileNotFoundError(f"vocabulary {vocab_file} not found.")
    vocab_size, special = _read_special_ids(vocab_file)

    def write(tmp):
        # Copy the vocabulary first so the asset path is inside the model.
        asset_vocab = os.path.join(tempfile.mkdtemp(dir=tmp), "vocab.txt")
        shutil.copyfile(vocab_file, asset_vocab)
        root = tf.__internal__.tracking.AutoTrackable()
        table = tf.lookup.StaticVocabularyTable(
            tf.lookup.TextFileInitializer(
                asset_vocab,
                tf.string,
                tf.lookup.TextFileIndex.WHOLE_LINE,
                tf.int64,
                tf.lookup.TextFileIndex.LINE_NUMBER,
            ),
            num_oov_buckets=1,
        )
        root._table = table
        tokenizer = text.BertTokenizer(
            table, lower_case=lower_case, unknown_token="[UNK]", token_out_type=tf.int64
        )

        tokenize = tf.__internal__.tracking.AutoTrackable()

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def tokenize_fn(strings):
            ids = tokenizer.tokenize(strings)
            # Out-of-vocabulary bucket -> [UNK].
            ids = tf.ragged.map_flat_values(
                lambda t: tf.where(t >= vocab_size, tf.constant(special["unk_id"], tf.int64), t), ids
            )
            return tf.cast(ids, tf.int32)

        @tf.function(input_signature=[])
        def special_tokens_fn():
            return {
                "vocab_size": tf.constant(vocab_size, tf.int32),
                **{k: tf.constant(v, tf.int32) for k, v in special.items() if k != "unk_id"},
            }

        tokenize.__call__ = tokenize_fn
        tokenize.get_special_tokens_dict = special_tokens_fn
        root.tokenize = tokenize

        @tf.function
        def pack(segments, seq_length=DEFAULT_SEQ_LENGTH):
            seq_length = tf.cast(seq_length, tf.int32)
            segments = [s.merge_dims(-2, -1) if s.ragged_rank > 1 else s for s in segments]
            trimmer = text.RoundRobinTrimmer(max_seq_length=seq_length - len(segments) - 1)
            trimmed = trimmer.trim(segments)
            ids, type_ids = text.combine_segments(
                trimmed,
                start_of_sequence_id=special["start_of_sequence_id"],
                end_of_segment_id=special["end_of_segment_id"],
            )
            word_ids, mask = text.pad_model_inputs(ids, seq_length, pad_value=special["padding_id"])
            type_ids, _ = text.pad_model_inputs(type_ids, seq_length)
            return {
                "input_word_ids": tf.cast(word_ids, tf.int32),
                "input_mask": tf.cast(mask, tf.int32),
                "input_type_ids": tf.cast(type_ids, tf.int32),
            }

        ragged = tf.RaggedTensorSpec([None, None, None], tf.int32, ragged_rank=2)
        for n in range(1, MAX_SEGMENTS + 1):
            pack.get_concrete_function([ragged] * n, tf.TensorSpec([], tf.int32))
        root.bert_pack_inputs = pack

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string)])
        def call(strings):
            return pack([tokenize_fn(strings)], default_seq_length)

        root.__call__ = call
        tf.saved_model.save(root, tmp, signatures={"serving_default": call})
        shutil.rmtree(os.path.dirname(asset_vocab))

    return write_atomically(path, write)
