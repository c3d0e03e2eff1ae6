"""tf.distribute: MirroredStrategy over two logical CPUs gives the single-device result.

Logical devices must be configured before TensorFlow initializes its devices, which other tests do at
import, so the comparison runs in a fresh interpreter. The batches are uneven on purpose: 121 examples in
batches of 40 end with a batch of one example, which leaves the second replica empty, and unlabelled
examples (-1) fall unevenly on the replicas, so every average must be taken over the global batch.
"""

import json
import os
import subprocess
import sys

import numpy as np

SCRIPT = r"""
import json, sys
import numpy as np
import tensorflow as tf
cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * 2)
import keras
from kd_tf.distill import Distiller
from tests.distill_helpers import make_data, mlp

x, y = make_data(121, seed=0)
y = y.copy()
y[[1, 2, 5, 41, 42, 43, 44, 90]] = -1  # unlabelled examples, unevenly split between the replicas
w = np.linspace(0.5, 1.5, len(x)).astype("float32")
teacher0, student0 = mlp(32, "teacher", seed=1), mlp(8, "student", seed=3)
init = (teacher0.get_weights(), student0.get_weights())

def run(strategy):
    with strategy.scope():
        teacher, student = mlp(32, "teacher", seed=1), mlp(8, "student", seed=3)
        teacher.set_weights(init[0]); student.set_weights(init[1])
        d = Distiller(student=student, teacher=teacher)
        d.compile(optimizer=keras.optimizers.SGD(0.1), alpha=0.3, temperature=2.0,
                  metrics=[keras.metrics.SparseCategoricalAccuracy(name="accuracy")])
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(40)  # 40, 40, 40 and a batch of 1
    history = d.fit(ds, epochs=3, verbose=0).history
    history["evaluate"] = d.evaluate(ds, verbose=0, return_dict=True)
    return [v.tolist() for v in student.get_weights()], history, strategy.num_replicas_in_sync

single = run(tf.distribute.get_strategy())
mirrored = run(tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"]))
print("RESULT " + json.dumps({"single": single, "mirrored": mirrored}))
"""

TOLERANCE = 1e-5  # float32 sums in a different order across replicas


def test_mirrored_strategy_matches_single_device_on_uneven_batches():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=root)
    out = subprocess.run(
        [sys.executable, "-c", SCRIPT], cwd=root, env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    line = next(text for text in out.stdout.splitlines() if text.startswith("RESULT "))
    result = json.loads(line[len("RESULT ") :])
    (w1, h1, n1), (w2, h2, n2) = result["single"], result["mirrored"]
    assert (n1, n2) == (1, 2)
    for a, b in zip(w1, w2):
        np.testing.assert_allclose(np.array(a), np.array(b), atol=TOLERANCE, rtol=0)
    for key in ("loss", "student_loss", "distillation_loss", "accuracy"):
        assert np.isfinite(h2[key]).all(), (key, h2[key])
        np.testing.assert_allclose(h1[key], h2[key], rtol=TOLERANCE, atol=TOLERANCE)
    e1, e2 = h1["evaluate"], h2["evaluate"]
    assert set(e1) == set(e2) == {"loss", "student_loss", "distillation_loss", "accuracy"}
    for key in e1:
        assert np.isfinite(e2[key]) and abs(e2[key] - e1[key]) <= TOLERANCE, (key, e1[key], e2[key])
