"""Fixes for KerasHub 0.32 pitfalls that break saving and reloading Llama models.

Applied once when `kd_tf.lm` is imported (`install()`); each is idempotent and
steps aside once KerasHub does the right thing itself.

1. `LlamaBackbone.get_config()` omits `tie_word_embeddings`, so a tied
   backbone rebuilt from its config (`keras.saving.load_model` of a `.keras`
   file, `from_config`, `clone_model`, a preset written by `save_to_preset`)
   comes back untied, with a second output matrix; loading its weights then
   fails ("expected 2 variables"). The wrapped `get_config` adds the flag with
   `setdefault`. `LlamaBackbone.__init__` already accepts it, so files saved
   this way load correctly in plain KerasHub too.

   Why a wrapper rather than a registered subclass: a subclass would write
   kd-tf's class name into every saved file (unloadable without kd-tf) and
   would break `CausalLM.from_preset`'s lookup of the task class from the
   backbone class; and it would not cover the teacher, which KerasHub builds
   as its own `Llama3Backbone`. Patching configs per save would miss
   `save_to_preset`, `clone_model` and `from_config`.

2. `Llama3Tokenizer.get_config()` omits `bos_token`, `eos_token` and
   `misc_special_tokens`, so a reloaded tokenizer falls back to Llama 3's
   special tokens (`<|begin_of_text|>`, `<|start_header_id|>`, ...) and fails
   on any other vocabulary (SmolLM2's included): "Cannot find special token
   '<|start_header_id|>' in the provided vocabulary". The wrapped `get_config`
   records the three; since JSON has no sets and `__init__` needs a set for
   `misc_special_tokens`, the wrapped `__init__` accepts a list. The list is
   only written when it differs from KerasHub's default, so Llama 3
   vocabularies still reload in plain KerasHub; other vocabularies need
   `import kd_tf.lm` before `keras.saving.load_model` (or `load_causal_lm`).

(The third pitfall, the Hugging Face converter dropping `rms_norm_eps`, is
fixed where models are loaded: `kd_tf.lm.models.load_causal_lm`.)
"""

import functools
import inspect

from keras_hub.src.models.llama.llama_backbone import LlamaBackbone
from keras_hub.src.models.llama3.llama3_tokenizer import Llama3Tokenizer

__all__ = ["install"]

_MARK = "_kd_tf_fix"


def _fix_backbone_config():
    original = LlamaBackbone.get_config
    if getattr(original, _MARK, False):
        return

    @functools.wraps(original)
    def get_config(self):
        config = original(self)
        config.setdefault("tie_word_embeddings", self.tie_word_embeddings)
        return config

    setattr(get_config, _MARK, True)
    LlamaBackbone.get_config = get_config


def _misc_special_tokens(tokenizer):
    names = getattr(tokenizer, "_special_token_attrs", [])
    return sorted(getattr(tokenizer, n) for n in names if n.startswith("special_token_"))


def _fix_llama3_tokenizer():
    original_init = Llama3Tokenizer.__init__
    if getattr(original_init, _MARK, False):
        return
    defaults = {name: p.default for name, p in inspect.signature(original_init).parameters.items()}
    default_misc = frozenset(defaults["misc_special_tokens"])  # KerasHub mutates its default
    original_config = Llama3Tokenizer.get_config

    # Same parameters in the same order, but no *args and no functools.wraps: Keras
    # reads the argument spec of __init__.
    def __init__(
        self,
        vocabulary=None,
        merges=None,
        bos_token=defaults["bos_token"],
        eos_token=defaults["eos_token"],
        misc_special_tokens=None,
        **kwargs,
    ):
        misc = default_misc if misc_special_tokens is None else misc_special_tokens
        original_init(
            self,
            vocabulary=vocabulary,
            merges=merges,
            bos_token=bos_token,
            eos_token=eos_token,
            misc_special_tokens=set(misc),
            **kwargs,
        )

    __init__.__doc__ = original_init.__doc__

    @functools.wraps(original_config)
    def get_config(self):
        config = original_config(self)
        config.setdefault("bos_token", self.start_token)
        config.setdefault("eos_token", self.end_token)
        misc = _misc_special_tokens(self)
        if set(misc) != default_misc - {self.start_token, self.end_token}:
            config.setdefault("misc_special_tokens", misc)
        return config

    setattr(__init__, _MARK, True)
    Llama3Tokenizer.__init__ = __init__
    Llama3Tokenizer.get_config = get_config


def install():
    """Apply the fixes (idempotent). Called when `kd_tf.lm` is imported."""
    _fix_backbone_config()
    _fix_llama3_tokenizer()
