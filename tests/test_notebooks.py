"""The notebooks of `notebooks/` run top to bottom on a fresh kernel, in their test configuration.

Each notebook has one cell tagged `parameters` (papermill's convention). The test inserts a cell after it
that sets small sizes, local models and an output folder (`OUT_DIR`) in a temporary directory, executes
the notebook with nbclient on the `python3` kernel (ipykernel's kernel for this interpreter), and then
checks the numbers the notebook printed and wrote to `OUT_DIR`. A notebook that takes longer than its time
limit fails.
"""

import json
import math
import os
import time

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NOTEBOOK_DIR = os.path.join(REPO_ROOT, "notebooks")


def inject_parameters(nb, params):
    """Inserts `name = value` assignments after the cell tagged `parameters` (as papermill does)."""
    index = next(
        (i for i, cell in enumerate(nb.cells) if "parameters" in cell.get("metadata", {}).get("tags", [])),
        None,
    )
    assert index is not None, "the notebook has no cell tagged 'parameters'"
    source = "# Injected by tests/test_notebooks.py\n" + "\n".join(
        f"{name} = {value!r}" for name, value in params.items()
    )
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(index + 1, cell)
    return nb


def run_notebook(name, params, time_limit_s):
    """Executes `notebooks/<name>` with `params`; returns the executed notebook and its run time."""
    nb = nbformat.read(os.path.join(NOTEBOOK_DIR, name), as_version=4)
    for cell in nb.cells:
        assert cell.cell_type != "code" or not cell.get("outputs"), (
            f"{name} is stored with outputs: strip them before committing"
        )
    inject_parameters(nb, params)
    client = nbclient.NotebookClient(
        nb, timeout=time_limit_s, kernel_name="python3", resources={"metadata": {"path": NOTEBOOK_DIR}}
    )
    start = time.perf_counter()
    client.execute()
    seconds = time.perf_counter() - start
    print(f"{name}: {seconds:.0f} s")
    assert seconds < time_limit_s, f"{name} took {seconds:.0f} s (limit {time_limit_s} s)"
    return nb, seconds


def text_output(nb):
    """All stdout the notebook printed, in order."""
    return "".join(
        out.get("text", "")
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
        if out.get("name") == "stdout"
    )


def images_shown(nb):
    return sum(
        "image/png" in out.get("data", {})
        for cell in nb.cells
        if cell.cell_type == "code"
        for out in cell.get("outputs", [])
    )


def read_results(out_dir):
    with open(os.path.join(out_dir, "results.json")) as f:
        return json.load(f)


def test_04_the_math(tmp_path):
    nb, _ = run_notebook("04_the_math.ipynb", {"EPOCHS": 12, "OUT_DIR": str(tmp_path)}, 180)
    results = read_results(tmp_path)
    article = results["article_4_3"]
    assert article["cross_entropy"] == pytest.approx(0.3617730, abs=1e-5)
    assert article["kl_divergence"] == pytest.approx(0.0366900, abs=1e-5)
    assert article["per_class_terms"] == pytest.approx([0.2008292, 0.1609438], abs=1e-5)
    step = results["article_4_2"]
    assert step["delta_b"] == pytest.approx([0.01, -0.01], abs=1e-6)
    assert len(step["delta_W"]) == 2 and all(len(row) == 2 for row in step["delta_W"])
    assert step["loss_after"] < step["loss_before"]
    rows = {r["model"]: r for r in results["section_4_3_training"]["rows"]}
    assert set(rows) == {"teacher", "distilled student", "label-only student"}
    assert rows["teacher"]["accuracy"] > 0.8
    assert rows["distilled student"]["accuracy"] > 0.7
    assert rows["distilled student"]["parameters"] * 10 < rows["teacher"]["parameters"]
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["agreement_with_teacher"] <= 1.0
    assert "0.361773" in text_output(nb)
    assert images_shown(nb) >= 3


def test_05_images(tmp_path):
    nb, _ = run_notebook(
        "05_images.ipynb", {"TEACHER_EPOCHS": 15, "STUDENT_EPOCHS": 20, "OUT_DIR": str(tmp_path)}, 180
    )
    results = read_results(tmp_path)
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "distilled student", "label-only student"]
    assert rows["teacher"]["accuracy"] > 0.9
    assert rows["distilled student"]["accuracy"] > 0.8
    assert rows["teacher"]["parameters"] > 20 * rows["distilled student"]["parameters"]
    assert rows["teacher"]["file_kb"] > 10 * rows["distilled student"]["file_kb"]
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["agreement_with_teacher"] <= 1.0
    assert len(results["history"]["distillation_loss"]) == 20
    assert os.path.exists(tmp_path / "digits_distillation.png")
    assert "distilled student" in text_output(nb) and images_shown(nb) >= 3


def test_01_quickstart(tmp_path, monkeypatch):
    # The notebook converts all-MiniLM-L6-v2 into kd-tf's model cache: keep it inside the test's folder.
    monkeypatch.setenv("KD_TF_CACHE", str(tmp_path / "model_cache"))
    out = tmp_path / "out"
    nb, _ = run_notebook(
        "01_quickstart.ipynb",
        {"TRAIN_SIZE": 128, "TEST_SIZE": 64, "SEQ_LENGTH": 64, "STUDENT_EPOCHS": 1, "OUT_DIR": str(out)},
        300,
    )
    results = read_results(out)
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "distilled student"]
    assert results["sizes"]["test"] == 64
    for r in rows.values():
        assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["f1"] <= 1.0 and r["latency_ms"] > 0
    assert rows["distilled student"]["parameters"] < rows["teacher"]["parameters"]
    assert {"loss", "student_loss", "distillation_loss", "val_accuracy"} <= set(results["distill_history"])
    printed = text_output(nb)
    assert "distillation_loss" in printed and "distilled student" in printed  # the logs and the table
    assert images_shown(nb) >= 1


def test_02_imdb_bert_distillation(tmp_path, tiny_encoder, tiny_preprocessor):
    """Section 5 with local TF-Hub-format models (a 4-layer teacher, the 2-layer tiny student) and tfds
    mock data entered by the notebook itself (mock_data patches tfds inside the kernel's process)."""
    from kd_tf.bert import hub_format

    teacher = hub_format.write_bert_encoder(
        str(tmp_path / "teacher"),
        num_layers=4,
        hidden_size=64,
        num_heads=2,
        intermediate_size=128,
        vocab_size=30522,
        seed=3,
    )
    out = tmp_path / "out"
    nb, _ = run_notebook(
        "02_imdb_bert_distillation.ipynb",
        {
            "TEACHER_HANDLE": teacher,
            "STUDENT_HANDLE": tiny_encoder,
            "PREPROCESSOR_HANDLE": tiny_preprocessor,
            "SEQ_LENGTH": 64,
            "VALIDATION_SIZE": 16,
            "TEACHER_EPOCHS": 1,
            "STUDENT_EPOCHS": 1,
            "TFDS_DATA_DIR": str(tmp_path / "tfds"),
            "USE_MOCK_TFDS": True,
            "MOCK_EXAMPLES": 64,
            "OUT_DIR": str(out),
        },
        240,
    )
    results = read_results(out)
    assert results["mock_data"] is True
    assert results["sizes"] == {"train": 48, "validation": 16, "test": 64}
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "distilled student"]
    for r in rows.values():
        assert all(0.0 <= r[k] <= 1.0 for k in ("accuracy", "precision", "recall", "f1"))
    assert rows["distilled student"]["parameters"] < rows["teacher"]["parameters"]
    assert "cached teacher logits: (48, 2)" in text_output(nb)
    assert os.path.exists(out / "student.keras")


def test_03_export_for_mobile(tmp_path, tiny_encoder, tiny_preprocessor):
    """Export of a tiny student (trained one epoch on real reviews here) to every TFLite variant."""
    import keras

    from kd_tf import classify as data
    from kd_tf.bert import HubPreprocessor
    from kd_tf.classify import models

    reviews = data.load_movie_reviews()
    _, sample = data.stratified_split(reviews, 64 / len(reviews), seed=0)
    student = models.build_classifier(tiny_encoder, 2, pooling="mean", name="student")
    student.compile("adam", keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    student.fit(data.make_dataset(sample, HubPreprocessor(tiny_preprocessor, seq_length=32), 16), verbose=0)
    student_path = str(tmp_path / "student.keras")
    student.save(student_path)
    out = tmp_path / "out"
    nb, _ = run_notebook(
        "03_export_for_mobile.ipynb",
        {
            "STUDENT_PATH": student_path,
            "PREPROCESSOR": tiny_preprocessor,
            "SEQ_LENGTH": 64,
            "NUM_SAMPLES": 32,
            "LATENCY_RUNS": 5,
            "OUT_DIR": str(out),
        },
        240,
    )
    results = read_results(out)
    assert results["passed"] is True
    rows = {r["variant"]: r for r in results["rows"]}
    assert list(rows) == ["float32", "float16", "dynamic_int8", "full_int8"]
    assert rows["float32"]["max_abs_diff"] < 1e-4
    assert rows["dynamic_int8"]["size_mb"] < rows["float16"]["size_mb"] < rows["float32"]["size_mb"]
    for r in rows.values():
        assert 0.0 <= r["label_agreement"] <= 1.0 and r["latency_ms_1_thread"] > 0
        assert r["mediapipe_label_agreement"] >= 0.99 or r["variant"] == "full_int8"
    assert [name for name, _ in results["mediapipe_top"]] == results["keras_labels"]
    assert (out / "export" / "tflite" / "model_dynamic_int8.tflite").exists()
    assert "MediaPipe:" in text_output(nb)


def test_06_distilling_a_language_model(tmp_path, monkeypatch):
    """Token-level distillation of a tiny random 4-block Llama (`tests/lm_tiny.py`) into 2 of its blocks, on
    real IMDB reviews, against a cross-entropy twin, and the student's LiteRT export."""
    from kd_tf.lm import convert_gguf
    from tests.lm_tiny import write_tiny_gguf

    monkeypatch.setenv("KD_TF_CACHE", str(tmp_path / "model_cache"))
    write_tiny_gguf(tmp_path / "tiny.gguf", seed=5, num_layers=4)
    teacher = convert_gguf(tmp_path / "tiny.gguf", tmp_path / "hf")
    out = tmp_path / "out"
    nb, _ = run_notebook(
        "06_distilling_a_language_model.ipynb",
        {
            "TEACHER": str(teacher),
            "STUDENT_BLOCKS": [0, 3],
            "DOCUMENTS": 40,
            "HELDOUT_FRACTION": 0.25,
            "SEQUENCE_LENGTH": 32,
            "TRAIN_TOKENS": 512,
            "BATCH_SIZE": 4,
            "EPOCHS": 2,
            "LEARNING_RATE": 1e-2,
            "HELDOUT_TOKENS": 160,
            "NEW_TOKENS": 4,
            "EXPORT": True,
            "OUT_DIR": str(out),
        },
        120,
    )
    results = read_results(out)
    assert results["teacher"]["blocks"] == 4 and results["student"]["blocks"] == [0, 3]
    assert results["student"]["parameters"] < results["teacher"]["parameters"]
    distilled, ce_only = results["distilled"], results["ce_only"]
    assert distilled["steps"] == ce_only["steps"] == 2 * 512 // (32 * 4)
    assert distilled["tokens"] == ce_only["tokens"] == 2 * 512
    assert results["cache"]["k"] == 16 and results["cache"]["samples"] == 48
    assert 0 < results["cache"]["bytes_per_token"] < results["cache"]["dense_bytes_per_token"]
    # The cache built by the notebook is the one distill_causal_lm read: one key in the folder.
    cached = [name for name in os.listdir(out / "teacher_cache") if not name.startswith(".")]
    assert cached == [results["cache"]["key"]]
    rows = {r["model"]: r for r in results["rows"]}
    assert list(rows) == ["teacher", "cut, untrained", "distilled", "cross-entropy only"]
    assert [rows[name]["blocks"] for name in rows] == [4, 2, 2, 2]
    for name, r in rows.items():
        assert math.isfinite(r["perplexity"]) and r["perplexity"] > 1.0
        assert r["tokens"] == results["heldout_tokens"] == 160
        assert name == "teacher" or 0.0 <= r["agreement"] <= 1.0
    # The random teacher is no model of English: only the distilled student learns to agree with it.
    assert rows["distilled"]["agreement"] > 2 * rows["cross-entropy only"]["agreement"]
    assert distilled["history"]["distillation_loss"][-1] < distilled["history"]["distillation_loss"][0]
    assert ce_only["history"]["loss"][-1] < ce_only["history"]["loss"][0]
    assert set(results["generations"]) == {"prompt", "teacher", "distilled", "cross-entropy only"}
    assert all(v > 0 for v in results["tokens_per_s"].values())
    assert os.path.exists(out / "heldout_perplexity.png") and images_shown(nb) >= 1
    assert list(results["export"]) == ["float32", "dynamic_int8"]
    assert all(math.isfinite(r["perplexity_change"]) for r in results["export"].values())
    assert (out / "export" / "litert" / "model_dynamic_int8.tflite").is_file()
    assert "cross-entropy only" in text_output(nb)
