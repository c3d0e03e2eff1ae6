"""Causal-LM teachers and students through KerasHub: load, cut, build, check tokenizers.

KerasHub 0.32 has three pitfalls with Llama models. Its Hugging Face converter
drops `rms_norm_eps` (SmolLM2 says 1e-5; the backbone gets its default 1e-6):
`load_causal_lm` passes the value from `config.json` when it builds the
backbone. The other two (`tie_word_embeddings` and the tokenizer's special
tokens missing from `get_config()`, which break `.keras` round trips) are fixed
by `kd_tf.lm.keras_hub_fixes`, installed on import; see its docstring.
"""

import inspect
import os

import keras
import keras_hub
from keras_hub.src.utils import preset_utils

from kd_tf.lm import keras_hub_fixes

__all__ = [
    "build_student",
    "check_tokenizers_match",
    "cut_student",
    "load_causal_lm",
    "tokenizer_vocabulary",
]


keras_hub_fixes.install()


def _is_local(preset):
    if "://" in preset:
        return False
    return os.path.sep in preset or preset.startswith(".") or os.path.exists(preset)


def _preset_loader(preset):
    """KerasHub's loader for `preset`, with errors that name the preset and the fix."""
    if _is_local(preset):
        if not os.path.isdir(preset):
            raise FileNotFoundError(
                f"Model folder {preset} not found. Pass a Hugging Face-format folder "
                "(config.json, model.safetensors, tokenizer.json), a KerasHub preset "
                "folder or a .keras file; for the SmolLM2 teacher use "
                "kd_tf.lm.smollm2_preset_dir()."
            )
        if not os.path.isfile(os.path.join(preset, "config.json")):
            raise FileNotFoundError(
                f"Model folder {preset} has no config.json; it is neither a Hugging "
                "Face-format folder nor a KerasHub preset."
            )
    try:
        return preset_utils.get_preset_loader(preset)
    except (OSError, ValueError) as error:  # network errors are OSErrors
        if _is_local(preset):
            raise
        raise OSError(
            f"Could not fetch the model preset {preset!r} ({type(error).__name__}: "
            f"{str(error)[:200]}). Without network access, pass a local folder instead: "
            "a Hugging Face-format folder, a KerasHub preset saved with "
            "save_to_preset(), or kd_tf.lm.smollm2_preset_dir() for SmolLM2."
        ) from error


def load_causal_lm(preset, dtype=None):
    """Load a KerasHub causal language model, with KerasHub's Llama pitfalls fixed.

    Accepts whatever `keras_hub.models.CausalLM.from_preset` accepts (a
    KerasHub preset name or a `kaggle://`/`hf://` handle, which need network; a
    local KerasHub preset folder; a local Hugging Face-format folder with
    `config.json`, `model.safetensors`, `tokenizer.json`, of a Llama, GPT-2,
    Gemma, ... model) and also a `.keras` file saved with `model.save`.

    For Hugging Face folders the RMSNorm epsilon is taken from `rms_norm_eps`
    in `config.json` (KerasHub's converter drops it). Tied embeddings and the
    tokenizer's special tokens survive saving (see `kd_tf.lm.keras_hub_fixes`).

    Args:
        preset: preset name, handle, folder path or `.keras` file path.
        dtype: optional dtype policy for the weights and computations, e.g.
            `"float32"` or `"bfloat16"`; default: the preset's.

    Returns:
        A `keras_hub.models.CausalLM` (e.g. `Llama3CausalLM`) with its
        preprocessor attached.

    Raises:
        FileNotFoundError: if a local folder or file does not exist or is not a
            model folder.
        OSError: if a remote preset cannot be fetched (no network); the message
            says how to use a local folder instead.

    Example:

    ```python
    from kd_tf.lm import load_causal_lm, smollm2_preset_dir
    teacher = load_causal_lm(smollm2_preset_dir())
    teacher.generate("The capital of France is", max_length=16)
    ```
    """
    preset = os.fspath(preset)
    if preset.endswith(".keras"):
        if not os.path.isfile(preset):
            raise FileNotFoundError(f"Saved model {preset} not found.")
        return keras.saving.load_model(preset)
    loader = _preset_loader(preset)
    backbone_kwargs = {} if dtype is None else {"dtype": dtype}
    config = loader.config
    if "model_type" in config and config.get("rms_norm_eps") is not None:
        backbone_cls = loader.check_backbone_class()
        if "layer_norm_epsilon" in inspect.signature(backbone_cls.__init__).parameters:
            backbone_kwargs["layer_norm_epsilon"] = float(config["rms_norm_eps"])
    backbone = keras_hub.models.Backbone.from_preset(preset, **backbone_kwargs)
    return keras_hub.models.CausalLM.from_preset(preset, backbone=backbone)


def _student_config(teacher, **changes):
    config = teacher.backbone.get_config()
    unknown = sorted(k for k in changes if k not in config)
    if unknown:
        raise ValueError(
            f"{type(teacher.backbone).__name__} has no setting(s) {unknown}; its "
            f"settings are {sorted(k for k in config if k not in ('name', 'trainable'))}."
        )
    config.update(changes)
    config.pop("name", None)
    config.pop("trainable", None)  # a teacher frozen by a Distiller must not give a frozen student
    return config


def _new_causal_lm(teacher, backbone):
    return type(teacher)(backbone=backbone, preprocessor=teacher.preprocessor)


def cut_student(teacher, blocks, name=None):
    """A student cut from a teacher: its embeddings, some of its blocks, its final norm.

    The student has the teacher's architecture and settings (tied embeddings,
    RMSNorm epsilon, rotary settings) with `len(blocks)` transformer blocks;
    block `j` of the student starts as a copy of the teacher's block
    `blocks[j]`. Every other weight (token embedding, final norm, and position
    embeddings where the model has them) is copied too. The student shares the
    teacher's preprocessor, so both tokenize alike. Weights are copied, not
    shared: training the student leaves the teacher unchanged.

    Args:
        teacher: a KerasHub `CausalLM` whose backbone has `transformer_layers`
            (Llama, Mistral, Gemma, GPT-2, ...).
        blocks: indices of the teacher blocks to keep, in the order the student
            uses them, e.g. `[0, 3, 6, 9, 12, 15, 18, 21, 24, 29]`. Negative
            indices count from the end.
        name: optional name of the student backbone.

    Returns:
        A new `CausalLM` of the teacher's class.

    Raises:
        ValueError: if `blocks` is empty or an index is out of range.

    Example:

    ```python
    from kd_tf.lm import cut_student, load_causal_lm, smollm2_preset_dir
    teacher = load_causal_lm(smollm2_preset_dir())
    student = cut_student(teacher, blocks=[0, 3, 6, 9, 12, 15, 18, 21, 24, 29])
    student.backbone.num_layers  # 10
    ```
    """
    source = teacher.backbone
    depth = len(source.transformer_layers)
    chosen = []
    for index in list(blocks):
        if not -depth <= int(index) < depth:
            raise ValueError(
                f"Block {index} is out of range: the teacher has {depth} blocks (0..{depth - 1})."
            )
        chosen.append(int(index) % depth)
    if not chosen:
        raise ValueError("cut_student needs at least one block, e.g. blocks=[0, -1].")
    changes = {"num_layers": len(chosen)}
    config = _student_config(teacher, **changes)
    if name is not None:
        config["name"] = name
    student = type(source).from_config(config)
    skip = {id(layer) for layer in student.transformer_layers}
    for layer in student.layers:
        if id(layer) in skip or not layer.weights:
            continue
        layer.set_weights(source.get_layer(layer.name).get_weights())
    for target, index in zip(student.transformer_layers, chosen):
        target.set_weights(source.transformer_layers[index].get_weights())
    return _new_causal_lm(teacher, student)


def build_student(teacher, num_layers=None, hidden_dim=None, intermediate_dim=None, name=None, **settings):
    """A fresh, randomly initialised student with the teacher's tokenizer.

    The student takes the teacher's backbone settings (vocabulary size, tied
    embeddings, RMSNorm epsilon, rotary settings, heads) except those given.

    Args:
        teacher: a KerasHub `CausalLM`.
        num_layers: number of transformer blocks; default the teacher's.
        hidden_dim: width of the residual stream; default the teacher's. For
            Llama it must divide by the number of query heads.
        intermediate_dim: width of the feed-forward layer; default the teacher's.
        name: optional name of the student backbone.
        **settings: any other backbone setting of the teacher's class, e.g.
            `num_query_heads=3, num_key_value_heads=1` for Llama or
            `num_heads=4` for GPT-2.

    Returns:
        A new `CausalLM` of the teacher's class sharing its preprocessor.

    Raises:
        ValueError: for a setting the backbone does not have, or (Llama) a
            width that does not split into whole heads.

    Example:

    ```python
    student = build_student(teacher, num_layers=4, hidden_dim=192,
                            intermediate_dim=512, num_query_heads=3,
                            num_key_value_heads=1)
    ```
    """
    changes = {
        k: v
        for k, v in dict(
            num_layers=num_layers, hidden_dim=hidden_dim, intermediate_dim=intermediate_dim, **settings
        ).items()
        if v is not None
    }
    config = _student_config(teacher, **changes)
    heads = config.get("num_query_heads")
    kv_heads = config.get("num_key_value_heads")
    if heads and config["hidden_dim"] % heads:
        raise ValueError(
            f"hidden_dim={config['hidden_dim']} does not split into "
            f"{heads} query heads; choose a multiple of {heads} or set "
            "num_query_heads."
        )
    if heads and kv_heads and heads % kv_heads:
        raise ValueError(f"num_query_heads={heads} is not a multiple of num_key_value_heads={kv_heads}.")
    if name is not None:
        config["name"] = name
    return _new_causal_lm(teacher, type(teacher.backbone).from_config(config))


def _tokenizer_of(model):
    preprocessor = getattr(model, "preprocessor", None)
    for candidate in (getattr(preprocessor, "tokenizer", None), getattr(model, "tokenizer", None), model):
        if candidate is not None and hasattr(candidate, "get_vocabulary"):
            return candidate
    raise ValueError(
        f"{type(model).__name__} has no tokenizer: pass a CausalLM with a "
        "preprocessor, a preprocessor or a tokenizer."
    )


def tokenizer_vocabulary(model):
    """The vocabulary of a CausalLM, preprocessor or tokenizer, as a list indexed by id.

    Args:
        model: a KerasHub `CausalLM`, `Preprocessor` or `Tokenizer`.

    Returns:
        A list of token strings; item `i` is the token with id `i`.

    Example:

    ```python
    tokenizer_vocabulary(teacher)[:3]  # ['<|endoftext|>', '<|im_start|>', '<|im_end|>']
    ```
    """
    tokenizer = _tokenizer_of(model)
    vocabulary = getattr(tokenizer, "vocabulary", None)
    if isinstance(vocabulary, dict):  # byte-pair tokenizers: token -> id
        return [token for token, _ in sorted(vocabulary.items(), key=lambda item: item[1])]
    return [str(token) for token in tokenizer.get_vocabulary()]


def check_tokenizers_match(teacher, student, show=3):
    """Refuse a student whose vocabulary differs from the teacher's.

    Token-level distillation compares the teacher's and the student's
    distributions over the same ids, so both must use the same vocabulary.

    Args:
        teacher: a CausalLM, preprocessor or tokenizer.
        student: a CausalLM, preprocessor or tokenizer.
        show: how many differing tokens to name in the error.

    Returns:
        The number of tokens in the shared vocabulary.

    Raises:
        ValueError: naming both vocabularies (sizes and the first differing ids
            with the teacher's and the student's tokens).

    Example:

    ```python
    check_tokenizers_match(teacher, student)  # 49152
    ```
    """
    teacher_vocab = tokenizer_vocabulary(teacher)
    student_vocab = tokenizer_vocabulary(student)
    if teacher_vocab == student_vocab:
        return len(teacher_vocab)
    differing = [
        i
        for i in range(max(len(teacher_vocab), len(student_vocab)))
        if i >= len(teacher_vocab) or i >= len(student_vocab) or teacher_vocab[i] != student_vocab[i]
    ][:show]

    def token(vocab, i):
        return repr(vocab[i]) if i < len(vocab) else "(none)"

    details = "; ".join(
        f"id {i}: teacher {token(teacher_vocab, i)}, student {token(student_vocab, i)}" for i in differing
    )
    raise ValueError(
        f"The student's tokenizer differs from the teacher's: teacher vocabulary "
        f"{len(teacher_vocab):,} tokens, student vocabulary {len(student_vocab):,} "
        f"tokens; first differences: {details}. Distillation compares both models "
        "over the same token ids: build the student with the teacher's tokenizer "
        "(kd_tf.lm.cut_student or build_student)."
    )
