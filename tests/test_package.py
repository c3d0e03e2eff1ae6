"""The public surface of `kd_tf`: every name imports, `import kd_tf` stays light, saved models load."""

import importlib
import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

import kd_tf
from kd_tf.classify import build_classifier

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_python(code, timeout=300):
    """Runs `code` in a new interpreter (nothing of kd-tf imported yet); returns the completed process."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout, cwd=REPO, env=env
    )


def test_every_public_name_resolves():
    for name in kd_tf.__all__:
        assert getattr(kd_tf, name) is not None, name
    for package in ("distill", "bert", "classify", "export", "pipeline", "lm"):
        module = importlib.import_module(f"kd_tf.{package}")
        for name in module.__all__:
            assert hasattr(module, name), f"kd_tf.{package}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        kd_tf.Nope  # noqa: B018


def test_import_kd_tf_does_not_start_tensorflow():
    code = (
        "import json, sys, kd_tf\nprint(json.dumps([m for m in ('tensorflow', 'keras') if m in sys.modules]))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-2000:]
    assert json.loads(result.stdout.strip().splitlines()[-1]) == []


@pytest.fixture(scope="module")
def saved_classifier(tiny_encoder, tmp_path_factory):
    """A classifier with a HubEncoder and MaskedMeanPooling, saved as .keras, and its logits on one input."""
    keras.utils.set_random_seed(0)
    model = build_classifier(tiny_encoder, 2, pooling="mean", name="student")
    path = str(tmp_path_factory.mktemp("saved") / "student.keras")
    model.save(path)
    ids = [[101, 2023, 2003, 102, 0]]
    x = {"input_word_ids": ids, "input_mask": [[1, 1, 1, 1, 0]], "input_type_ids": [[0] * 5]}
    logits = keras.ops.convert_to_numpy(model({k: keras.ops.convert_to_tensor(v) for k, v in x.items()}))
    return path, x, logits.tolist()


@pytest.mark.parametrize(
    "imports",
    ["import kd_tf, keras", "import keras, kd_tf", "import kd_tf\nimport keras.saving as saving"],
    ids=["kd_tf-first", "keras-first", "submodule-import"],
)
def test_saved_model_loads_after_import_kd_tf(saved_classifier, imports):
    path, x, expected = saved_classifier
    code = f"""{imports}
import json, keras, numpy as np
model = keras.saving.load_model({path!r})
x = {{k: np.asarray(v, "int32") for k, v in {x!r}.items()}}
print(json.dumps(np.asarray(model(x)).tolist()))
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    got = json.loads(result.stdout.strip().splitlines()[-1])
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_pipeline_loads_its_models_in_a_fresh_process(saved_classifier, tmp_path):
    """`Pipeline.load_model` works in a process that imported neither kd_tf.bert nor kd_tf.classify."""
    path, _, _ = saved_classifier
    run = tmp_path / "runs" / "r"
    (run / "student").mkdir(parents=True)
    os.link(path, run / "student" / "model.keras")
    code = f"""
from kd_tf.config import config_from_dict
from kd_tf.pipeline import Pipeline
config = config_from_dict({{"run_name": "r", "output_dir": {str(tmp_path / "runs")!r}}})
model = Pipeline(config).task.load_model("student")
print(type(model.get_layer("encoder")).__name__)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "HubEncoder"
