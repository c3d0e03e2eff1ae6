"""Hidden-state distillation in a run (`distill.hidden_states`): each student layer learns its teacher block.

A student cut from the teacher starts its layer `i` from the teacher block `student.init_layers[i]`; with
`distill.hidden_states` the `Distiller` also matches that layer's hidden states to that block's, token by
token over real tokens (`kd_tf.distill.FeatureMatch`, masked by `input_mask`), so each layer is trained
towards the block it was initialised as. A narrow student's matches project its width to the teacher's,
and the projection starts from the slicing itself (`kd_tf.bert.narrow_projection`: each student dimension
placed back on the teacher dimension it came from), not from a random map.

Hidden states come from the live teacher: the cached logits carry none (dense hidden states of every
training text would take gigabytes), so the teacher runs in every training step.

**A pruned vocabulary.** A student with its own vocabulary splits some words into other pieces than the
teacher does, so its tokens and the teacher's would not line up. The teacher therefore reads the student's
own tokens, mapped back to the teacher's ids (`TokenIdMap`): every kept piece is a piece of the teacher's
vocabulary, so this is the same text, split as the student splits it, and the hidden states line up token
by token. (Its logits are then the teacher's on that split, not on its own; for 96% of the words of IMDB
reviews at 8,000 kept pieces the two splits are the same.)
"""

from __future__ import annotations

import json

import keras
import numpy as np

from kd_tf.bert.encoder import INPUT_KEYS


@keras.saving.register_keras_serializable(package="kd_tf")
class TokenIdMap(keras.layers.Layer):
    """Maps token ids of a pruned vocabulary back to the ids of the vocabulary it was cut from.

    Args:
        kept_ids: the original id of each kept token (`kd_tf.bert.PrunedVocabulary.kept_ids`: new id `i`
            is old id `kept_ids[i]`).

    Example:
    ```python
    TokenIdMap([0, 100, 101, 102])(np.array([[2, 1, 3, 0]]))  # [[101, 100, 102, 0]]
    ```
    """

    def __init__(self, kept_ids, **kwargs):
        super().__init__(**kwargs)
        self.kept_ids = [int(i) for i in kept_ids]
        self._table = np.asarray(self.kept_ids, np.int32)

    def call(self, ids):
        return keras.ops.take(keras.ops.convert_to_tensor(self._table), keras.ops.cast(ids, "int32"))

    def compute_output_spec(self, ids):
        return keras.KerasTensor(ids.shape, "int32")

    def get_config(self):
        return {**super().get_config(), "kept_ids": self.kept_ids}


def teacher_view(teacher, vocabulary_record=None):
    """The teacher as the Distiller sees it: its logits and hidden states, on the student's tokens.

    Args:
        teacher: the fine-tuned teacher classifier (`kd_tf.classify.build_classifier`).
        vocabulary_record: the student's `student_init/vocabulary.json` (a pruned vocabulary), or None
            when the student uses the teacher's vocabulary.

    Returns:
        A functional `keras.Model` on the input dict whose dict output holds `logits` and
        `encoder_outputs` (one `[batch, seq, hidden]` tensor per teacher block), sharing the teacher's
        weights.

    Example:
    ```python
    view = teacher_view(run.load_model("teacher"), "saved_models/demo/student_init/vocabulary.json")
    sorted(view.output)  # ['encoder_outputs', 'logits']
    ```
    """
    from kd_tf.classify.models import encoder_inputs, feature_model

    features = feature_model(teacher)
    if vocabulary_record is None:
        return features
    with open(vocabulary_record) as f:
        kept_ids = json.load(f)["kept_ids"]
    inputs = encoder_inputs()
    mapped = {k: inputs[k] for k in INPUT_KEYS}
    mapped["input_word_ids"] = TokenIdMap(kept_ids, name="to_teacher_ids")(inputs["input_word_ids"])
    outputs = features(mapped)
    return keras.Model(
        inputs,
        {"logits": outputs["logits"], "encoder_outputs": outputs["encoder_outputs"]},
        name="teacher_on_student_tokens",
    )


def layer_matches(init_layers, loss="mse", weight=1.0):
    """One `FeatureMatch` per student layer, to the teacher block it was cut from.

    Args:
        init_layers: the teacher block of each student layer, in order (`student.init_layers`).
        loss: `"mse"` or `"cosine"`.
        weight: the weight of each match.

    Returns:
        A list of `kd_tf.distill.FeatureMatch`: teacher `encoder_outputs/<block>` (of `teacher_view`) to
        student `encoder/encoder_outputs/<i>` (of a `build_classifier` model), masked by `input_mask`.

    Example:
    ```python
    [m.teacher_feature for m in layer_matches([1, 4])]  # ['encoder_outputs/1', 'encoder_outputs/4']
    ```
    """
    from kd_tf.distill import FeatureMatch

    return [
        FeatureMatch(
            f"encoder_outputs/{block}",
            f"encoder/encoder_outputs/{i}",
            loss=loss,
            weight=weight,
            mask="input_mask",
            name=f"hidden_state_{i}_to_{block}",
        )
        for i, block in enumerate(init_layers)
    ]


def start_projections(matches, encoder):
    """Starts every learned projection of `matches` from a narrow student's slicing.

    Args:
        matches: the `FeatureMatch`es of a built `Distiller`.
        encoder: the student's initial encoder folder; a folder without a narrowing record (a student as
            wide as the teacher, whose matches need no projection) leaves the projections as they are.

    Returns:
        The number of projections set.

    Example:
    ```python
    start_projections(distiller.feature_matches, "saved_models/demo/student_init")  # 2
    ```
    """
    from kd_tf.bert import narrow

    projected = [m for m in matches if m.projector is not None]
    if not projected:
        return 0
    kernel = narrow.narrow_projection(encoder)
    for match in projected:
        match.projector.kernel.assign(kernel)
        match.projector.bias.assign(np.zeros(match.projector.bias.shape, np.float32))
    return len(projected)


__all__ = ["TokenIdMap", "layer_matches", "start_projections", "teacher_view"]
