"""kd_tf.losses against values computed by hand (natural logarithms)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from kd_tf.distill import features as F
from kd_tf.distill import losses as L

# Article, section 4.3: teacher probabilities [0.9, 0.1], student [0.8, 0.2].
# Cross-entropy  -(0.9 ln 0.8 + 0.1 ln 0.2) = 0.9 * 0.2231436 + 0.1 * 1.6094379 = 0.3617730
# (the article prints [0.08, 0.02], which is wrong: it is neither the loss nor its per-class terms,
#  0.2008292 and 0.1609438).
# KL            0.9 ln(0.9/0.8) + 0.1 ln(0.1/0.2) = 0.1060047 - 0.0693147 = 0.0366900
ARTICLE_CE = 0.3617730
ARTICLE_KL = 0.0366900


def _np(x):
    return np.asarray(keras.ops.convert_to_numpy(x))


def test_article_section_4_3_on_probabilities():
    t, s = [[0.9, 0.1]], [[0.8, 0.2]]
    assert _np(L.cross_entropy_distillation(t, s, from_logits=False)) == pytest.approx([ARTICLE_CE], abs=1e-6)
    assert _np(L.kl_distillation(t, s, from_logits=False)) == pytest.approx([ARTICLE_KL], abs=1e-6)
    # The same numbers from logits whose softmax are those probabilities.
    t_logits, s_logits = np.log(t), np.log(s)
    assert _np(L.cross_entropy_distillation(t_logits, s_logits)) == pytest.approx([ARTICLE_CE], abs=1e-6)
    assert _np(L.kl_distillation(t_logits, s_logits)) == pytest.approx([ARTICLE_KL], abs=1e-6)
    # CE - KL is the teacher's entropy: 0.9 ln(1/0.9) + 0.1 ln(1/0.1) = 0.3250830.
    assert ARTICLE_CE - ARTICLE_KL == pytest.approx(0.3250830, abs=1e-6)
    # Keras Loss classes give the same numbers.
    assert float(L.CrossEntropyDistillation(from_logits=False)(t, s)) == pytest.approx(ARTICLE_CE, abs=1e-6)
    assert float(L.KLDistillation(from_logits=False)(t, s)) == pytest.approx(ARTICLE_KL, abs=1e-6)


def test_temperature_scaling_and_t_squared():
    # Teacher logits [2, 0], student [0, 0], T = 2: p_t = softmax([1, 0]) = [e/(e+1), 1/(e+1)]
    # = [0.7310586, 0.2689414], p_s = [0.5, 0.5].
    # KL = ln 2 - H(p_t) = 0.6931472 - 0.5822031 = 0.1109441; times T^2 = 0.4437763.
    # Soft CE = ln 2 times T^2 = 2.7725887.
    t, s = [[2.0, 0.0]], [[0.0, 0.0]]
    assert _np(L.kl_distillation(t, s, temperature=2.0)) == pytest.approx([0.4437763], abs=1e-6)
    assert _np(L.cross_entropy_distillation(t, s, temperature=2.0)) == pytest.approx([2.7725887], abs=1e-6)
    # The class's own temperature is used when called alone.
    assert float(L.KLDistillation(temperature=2.0)(t, s)) == pytest.approx(0.4437763, abs=1e-6)
    # per_example's temperature overrides it.
    assert _np(L.KLDistillation(temperature=5.0).per_example(t, s, temperature=2.0)) == pytest.approx(
        [0.4437763], abs=1e-6
    )


def test_kl_gradient_is_t_times_probability_difference():
    # d/ds [T^2 KL(p_t || softmax(s/T))] = T (softmax(s/T) - p_t): with T=2, s=[0,0], t=[2,0]
    # = 2 * ([0.5, 0.5] - [0.7310586, 0.2689414]) = [-0.4621172, 0.4621172].
    s = tf.Variable([[0.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(L.kl_distillation([[2.0, 0.0]], s, temperature=2.0))
    assert tape.gradient(loss, s).numpy() == pytest.approx(np.array([[-0.4621172, 0.4621172]]), abs=1e-6)


def test_logits_mse_and_hard_label_cross_entropy():
    # ((1-0)^2 + (2-0)^2) / 2 = 2.5, temperature ignored.
    assert _np(L.mse_distillation([[1.0, 2.0]], [[0.0, 0.0]], temperature=7.0)) == pytest.approx([2.5])
    assert float(L.MSEDistillation()([[1.0, 2.0], [0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]])) == pytest.approx(
        1.25
    )
    # Uniform logits: ln 2 = 0.6931472; logits [2, 0] with label 0: ln(1 + e^-2) = 0.1269280.
    ce = _np(L.hard_label_cross_entropy([0, 0], [[0.0, 0.0], [2.0, 0.0]]))
    assert ce == pytest.approx([0.6931472, 0.1269280], abs=1e-6)
    # [B, 1] labels and one-hot rows give the same values.
    assert _np(L.hard_label_cross_entropy([[0], [0]], [[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(
        ce, abs=1e-6
    )
    one_hot = np.array([[1.0, 0.0], [1.0, 0.0]], "float32")
    assert _np(L.hard_label_cross_entropy(one_hot, [[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(ce, abs=1e-6)
    assert float(L.HardLabelCrossEntropy()([0, 0], [[0.0, 0.0], [2.0, 0.0]])) == pytest.approx(
        (0.6931472 + 0.1269280) / 2, abs=1e-6
    )


def test_numerically_stable_for_extreme_logits():
    t = [[1000.0, -1000.0]]
    s = [[-1000.0, 1000.0]]
    kl = _np(L.kl_distillation(t, s))
    # p_t = [1, 0], log p_s = [-2000, 0]: KL = 2000 exactly, finite.
    assert np.isfinite(kl).all() and kl == pytest.approx([2000.0], rel=1e-5)
    assert _np(L.cross_entropy_distillation(t, s)) == pytest.approx([2000.0], rel=1e-5)
    assert _np(L.hard_label_cross_entropy([0], s)) == pytest.approx([2000.0], rel=1e-5)
    # Probabilities with exact zeros are clipped, not log(0).
    assert np.isfinite(_np(L.kl_distillation([[1.0, 0.0]], [[0.0, 1.0]], from_logits=False))).all()


def test_several_teachers_average_their_softened_distributions():
    # Teachers [0.9, 0.1] and [0.5, 0.5] with weights 3:1 average to [0.8, 0.2].
    teachers = [np.log([[0.9, 0.1]]), np.log([[0.5, 0.5]])]
    s = np.log([[0.8, 0.2]])
    assert _np(L.kl_distillation(teachers, s, teacher_weights=[3, 1])) == pytest.approx([0.0], abs=1e-6)
    # Soft CE = H([0.8, 0.2]) = -(0.8 ln 0.8 + 0.2 ln 0.2) = 0.5004024.
    assert _np(L.cross_entropy_distillation(teachers, s, teacher_weights=[3, 1])) == pytest.approx(
        [0.5004024], abs=1e-6
    )
    # A [B, K, C] tensor is the same as a list.
    stacked = np.stack(teachers, axis=1)
    assert _np(L.kl_distillation(stacked, s, teacher_weights=[3, 1])) == pytest.approx([0.0], abs=1e-6)
    # Equal weights by default: [0.7, 0.3] vs student [0.8, 0.2]:
    # 0.7 ln(0.7/0.8) + 0.3 ln(0.3/0.2) = -0.0934720 + 0.1216395 = 0.0281675.
    assert _np(L.kl_distillation(teachers, s)) == pytest.approx([0.0281675], abs=1e-6)
    # MSE on logits uses the weighted mean of logits: teacher logits [4, 0] and [0, 0] weights 1:3 -> [1, 0].
    assert _np(
        L.mse_distillation([[[4.0, 0.0], [0.0, 0.0]]], [[0.0, 0.0]], teacher_weights=[1, 3])
    ) == pytest.approx([0.5])
    with pytest.raises(ValueError, match="one weight per teacher"):
        L.kl_distillation(teachers, s, teacher_weights=[1.0])


def test_padding_mask_for_per_token_logits():
    # Two tokens; the second is padding and has a huge disagreement that must not count.
    t = np.array([[[2.0, 0.0], [50.0, -50.0]]], "float32")
    s = np.array([[[0.0, 0.0], [-50.0, 50.0]]], "float32")
    masked = _np(L.kl_distillation(t, s, temperature=2.0, mask=[[1, 0]]))
    assert masked == pytest.approx([0.4437763], abs=1e-5)
    unmasked = _np(L.kl_distillation(t, s, temperature=2.0))
    assert unmasked[0] > 10.0


def test_sample_weights_in_keras_loss_classes():
    t = [[2.0, 0.0], [0.0, 0.0]]
    s = [[0.0, 0.0], [0.0, 0.0]]
    # Per example: [0.4437763, 0]; weights [1, 0]; sum over batch size 2 -> 0.2218882.
    loss = L.KLDistillation(temperature=2.0)
    assert float(loss(t, s, sample_weight=[1.0, 0.0])) == pytest.approx(0.2218882, abs=1e-6)


def test_feature_match_mse_cosine_and_mask():
    # MSE over the hidden axis, masked mean over tokens.
    t = np.array([[[1.0, 1.0], [3.0, 3.0], [100.0, 100.0]]], "float32")
    s = np.array([[[0.0, 0.0], [1.0, 1.0], [0.0, 0.0]]], "float32")
    fm = F.FeatureMatch("x", projection=False, weight=2.0)
    fm.build(t.shape, s.shape)
    # tokens: (1+1)/2 = 1, (4+4)/2 = 4, third masked -> mean 2.5, times weight 2 = 5.
    assert _np(fm(t, s, np.array([[1, 1, 0]]))) == pytest.approx([5.0])
    cos = F.FeatureMatch("x", loss="cosine", projection=False)
    cos.build((None, 2), (None, 2))
    # identical direction -> 0, orthogonal -> 1, opposite -> 2.
    out = _np(
        cos(np.array([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]), np.array([[3.0, 0.0], [0.0, 2.0], [-1.0, 0.0]]))
    )
    assert out == pytest.approx([0.0, 1.0, 2.0], abs=1e-6)


def test_feature_match_projection_only_when_widths_differ():
    same = F.FeatureMatch("h")
    same.build((None, 8), (None, 8))
    assert same.projector is None and not same.trainable_weights
    diff = F.FeatureMatch("h", "g")
    diff.build((None, 8), (None, 4))
    assert diff.projector is not None
    assert [tuple(w.shape) for w in diff.trainable_weights] == [(4, 8), (8,)]
    forced = F.FeatureMatch("h", projection=True)
    forced.build((None, 8), (None, 8))
    assert forced.projector is not None
    never = F.FeatureMatch("h", projection=False)
    with pytest.raises(ValueError, match="projection='auto'"):
        never.build((None, 8), (None, 4))
    # Gradient flows to the projection but never to the teacher feature.
    t = tf.Variable(np.ones((2, 8), "float32"))
    s = tf.Variable(np.ones((2, 4), "float32"))
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(diff(t, s))
    g_t, g_s, g_w = tape.gradient(loss, [t, s, diff.trainable_weights[0]])
    assert g_t is None and g_s is not None and g_w is not None


def test_layer_map_and_feature_names():
    matches = F.layer_map(12, 4, loss="cosine")
    assert [m.teacher_feature for m in matches] == [
        "encoder_outputs/2",
        "encoder_outputs/5",
        "encoder_outputs/8",
        "encoder_outputs/11",
    ]
    assert [m.student_path for m in matches] == [("encoder_outputs", i) for i in range(4)]
    assert all(m.loss == "cosine" for m in matches)
    assert F.FeatureMatch("pooled_output").teacher_path == ("pooled_output",)
    assert F.feature_path("encoder/encoder_outputs/3") == ("encoder", "encoder_outputs", 3)
    with pytest.raises(ValueError):
        F.layer_map(2, 4)


def test_get_and_config_round_trip():
    assert isinstance(L.get("kl"), L.KLDistillation)
    assert isinstance(L.get("mse"), L.MSEDistillation)
    assert isinstance(L.get(None), L.KLDistillation)
    with pytest.raises(ValueError, match="Unknown distillation loss"):
        L.get("nope")
    loss = L.CrossEntropyDistillation(temperature=4.0, teacher_weights=[1, 2])
    clone = L.CrossEntropyDistillation.from_config(loss.get_config())
    assert clone.temperature == 4.0 and clone.teacher_weights == [1, 2]
    fm = F.FeatureMatch("a/1", "b/0", loss="cosine", weight=0.5, mask=None)
    fm2 = F.FeatureMatch.from_config(fm.get_config())
    assert (fm2.teacher_path, fm2.student_path, fm2.loss, fm2.weight, fm2.mask) == (
        ("a", 1),
        ("b", 0),
        "cosine",
        0.5,
        None,
    )
    with pytest.raises(ValueError, match="temperature must be positive"):
        L.KLDistillation(temperature=0.0)
    assert math.isclose(ARTICLE_CE, 0.9 * -math.log(0.8) + 0.1 * -math.log(0.2), abs_tol=1e-6)


def test_one_teacher_weight_means_one_teacher_and_multi_can_be_explicit():
    # A single teacher with teacher_weights=[1.0] is that teacher (it used to be read as [B, K, C]).
    t, s = [[2.0, 0.0]], [[0.0, 0.0]]
    assert _np(L.kl_distillation(t, s, temperature=2.0, teacher_weights=[1.0])) == pytest.approx(
        [0.4437763], abs=1e-6
    )
    # Rank 3 with B == K == T == 2: `multi` says which it is. Two teachers [2, 0] and [0, 0] at T=1
    # average to p = [(0.8807971 + 0.5) / 2, ...] = [0.6903985, 0.3096015]; KL to uniform is
    # ln 2 - H(p) = 0.6931472 - 0.6187814 = 0.0743658.
    stacked = np.array([[[2.0, 0.0], [0.0, 0.0]], [[2.0, 0.0], [0.0, 0.0]]], "float32")
    uniform = np.zeros((2, 2), "float32")
    assert _np(L.kl_distillation(stacked, uniform, multi=True)) == pytest.approx([0.0743658] * 2, abs=1e-6)
    # The same tensor as one teacher's per-token logits against per-token student logits: the mean over
    # tokens of KL([0.8807971, 0.1192029] || uniform) = 0.6931472 - 0.3653339 = 0.3278133 and 0.
    per_token = _np(L.kl_distillation(stacked, np.zeros((2, 2, 2), "float32"), multi=False))
    assert per_token == pytest.approx([0.3278133 / 2] * 2, abs=1e-6)
