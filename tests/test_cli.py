"""The kd-tf command line, run as users run it (a subprocess) and in-process."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

import kd_tf
from kd_tf import cli
from kd_tf.bert import HubEncoder, HubPreprocessor
from tests.numpy_bert import bert_forward

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "good", "bad", "film", "very"]


def run_cli(*args):
    """Runs `kd-tf` in a fresh process with the user's default environment."""
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    return subprocess.run(
        [sys.executable, "-m", "kd_tf.cli", *args], env=env, capture_output=True, text=True, timeout=300
    )


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"kd-tf {kd_tf.__version__}"
    result = run_cli("--help")
    assert result.returncode == 0
    assert "convert-hf-bert" in result.stdout and "inspect" in result.stdout
    assert "evaluate" in result.stdout and "predict" in result.stdout


def test_evaluate_and_run_options_parse():
    parser = cli.build_parser()
    args = parser.parse_args(
        [
            "evaluate",
            "runs/demo",
            "--test-file",
            "dev.tsv",
            "--label-map",
            "positive=pos",
            "--label-map",
            "0=neg",
        ]
    )
    assert (args.run_dir, args.test_file, args.clean) == ("runs/demo", "dev.tsv", None)
    assert cli._label_map(args.label_map) == {"positive": "pos", "0": "neg"}
    assert parser.parse_args(["evaluate", "--config", "c.yaml"]).run_dir is None
    assert parser.parse_args(["evaluate", "r", "--test-file", "f.csv", "--no-clean"]).clean is False
    assert parser.parse_args(["run", "--config", "c.yaml", "--seeds", "3"]).seeds == 3
    args = parser.parse_args(["predict", "runs/demo", "a fine film", "dull", "--models", "student"])
    assert (args.texts, args.models) == (["a fine film", "dull"], "student")
    with pytest.raises(ValueError, match="write FILE_LABEL=RUN_LABEL"):
        cli._label_map(["positive:pos"])


@pytest.fixture
def tiny_hf_checkpoint(tmp_path):
    """A 1-layer Hugging Face-style BERT checkpoint written from random numbers."""
    from safetensors.numpy import save_file

    rng = np.random.default_rng(0)
    h, inter, v, p = 8, 16, len(VOCAB), 16
    config = {
        "model_type": "bert",
        "vocab_size": v,
        "hidden_size": h,
        "num_hidden_layers": 1,
        "num_attention_heads": 2,
        "intermediate_size": inter,
        "max_position_embeddings": p,
        "type_vocab_size": 2,
        "hidden_act": "gelu",
        "layer_norm_eps": 1e-12,
    }
    shapes = {
        "embeddings.word_embeddings.weight": (v, h),
        "embeddings.position_embeddings.weight": (p, h),
        "embeddings.token_type_embeddings.weight": (2, h),
        "embeddings.LayerNorm.weight": (h,),
        "embeddings.LayerNorm.bias": (h,),
        "pooler.dense.weight": (h, h),
        "pooler.dense.bias": (h,),
    }
    pre = "encoder.layer.0."
    for name in (
        "attention.self.query",
        "attention.self.key",
        "attention.self.value",
        "attention.output.dense",
    ):
        shapes[pre + name + ".weight"], shapes[pre + name + ".bias"] = (h, h), (h,)
    shapes.update(
        {
            pre + "attention.output.LayerNorm.weight": (h,),
            pre + "attention.output.LayerNorm.bias": (h,),
            pre + "intermediate.dense.weight": (inter, h),
            pre + "intermediate.dense.bias": (inter,),
            pre + "output.dense.weight": (h, inter),
            pre + "output.dense.bias": (h,),
            pre + "output.LayerNorm.weight": (h,),
            pre + "output.LayerNorm.bias": (h,),
        }
    )
    tensors = {"bert." + k: rng.normal(size=s).astype(np.float32) for k, s in shapes.items()}
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text(json.dumps(config))
    (tmp_path / "vocab.txt").write_text("\n".join(VOCAB) + "\n")
    return tmp_path, config, {k[5:]: v for k, v in tensors.items()}


def test_convert_hf_bert_command(tiny_hf_checkpoint, tmp_path):
    checkpoint, config, tensors = tiny_hf_checkpoint
    out = tmp_path / "converted"
    result = run_cli("convert-hf-bert", str(checkpoint), str(out))
    assert result.returncode == 0, result.stderr
    assert f"encoder:      {out}/encoder" in result.stdout
    assert "oneDNN" not in result.stderr and "cuda" not in result.stderr
    batch = HubPreprocessor(str(out / "preprocessor"), seq_length=6)(tf.constant(["very good film", "bad"]))
    got = HubEncoder(str(out / "encoder"))(batch)["sequence_output"].numpy()
    want = bert_forward(tensors, config, batch["input_word_ids"].numpy(), batch["input_mask"].numpy())
    np.testing.assert_allclose(got, want, atol=1e-4)
    # The same folder again: refused, nothing overwritten.
    before = sorted(os.listdir(out))
    again = run_cli("convert-hf-bert", str(checkpoint), str(out))
    assert again.returncode == 1
    assert again.stderr.count("\n") == 1 and "already exists" in again.stderr
    assert sorted(os.listdir(out)) == before


def test_inspect_prints_outputs(tiny_encoder, tiny_preprocessor, capsys):
    code = cli.main(
        [
            "inspect",
            tiny_encoder,
            "--preprocessor",
            tiny_preprocessor,
            "--seq-length",
            "12",
            "--text",
            "a good film",
            "--text",
            "bad",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "pooled_output: shape (2, 32) float32" in out
    assert "sequence_output: shape (2, 12, 32) float32" in out
    assert "[0]   5 tokens" in out


def test_errors_are_one_line_with_non_zero_exit(tmp_path, capsys):
    code = cli.main(["inspect", str(tmp_path / "missing")])
    assert code == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1
    assert err.startswith("kd-tf inspect: error: HubHandleError:")


def _with_handle(path, out, handle):
    """A copy of the .keras file `path` whose encoder layer names `handle` (as a crafted file would)."""
    import zipfile

    with zipfile.ZipFile(path) as src, zipfile.ZipFile(out, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "config.json":
                config = json.loads(data)

                def swap(node):
                    if isinstance(node, dict):
                        if isinstance(node.get("config"), dict) and "handle" in node["config"]:
                            node["config"]["handle"] = handle
                        for value in node.values():
                            swap(value)
                    elif isinstance(node, list):
                        for value in node:
                            swap(value)

                swap(config)
                data = json.dumps(config).encode()
            dst.writestr(item, data)
    return str(out)


@pytest.mark.parametrize(
    "handle",
    [
        "https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-2_H-128_A-2/2",
        "small_bert/bert_en_uncased_L-2_H-128_A-2",
        "https://www.kaggle.com/models/tensorflow/bert/TensorFlow2/en-uncased-l-2-h-128-a-2/2",
    ],
)
def test_export_refuses_a_student_with_a_remote_handle(
    handle, tiny_encoder, tiny_preprocessor, tmp_path, capsys
):
    from kd_tf.classify import build_classifier

    model = build_classifier(tiny_encoder, 2, pooling="mean", name="student")
    model.save(tmp_path / "student.keras")
    crafted = _with_handle(tmp_path / "student.keras", tmp_path / "crafted.keras", handle)
    (tmp_path / "texts.txt").write_text("a good film\na bad film\n")
    args = [
        "export",
        crafted,
        str(tmp_path / "out"),
        "--preprocessor",
        tiny_preprocessor,
        "--labels",
        "neg,pos",
    ]
    args += ["--sample-file", str(tmp_path / "texts.txt"), "--variants", "float32"]
    assert cli.main(args) == 1
    err = capsys.readouterr().err
    assert f"its layer 'encoder' loads the remote handle {handle}" in err and "--allow-remote-handles" in err
    assert err.count("\n") == 1 and not (tmp_path / "out").exists()
    # Opting in lets kd-tf load it: here, with no network, the download itself fails.
    assert cli.main(args + ["--allow-remote-handles"]) == 1
    assert "TFHUB_CACHE_DIR" in capsys.readouterr().err  # HubHandleError: the handle could not be fetched
    assert not (tmp_path / "out").exists()
