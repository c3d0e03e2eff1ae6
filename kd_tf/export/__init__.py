"""Export for servers and phones, verified on the real runtimes.

* `export_student` (`student`): a classifier into a serving SavedModel on raw text, a TF-Hub-format encoder
  and preprocessor, and TFLite variants with MediaPipe metadata, each checked against the Keras student.
* `saved_model`: the serving SavedModel and the TF-Hub-format encoder.
* `litert`: TFLite conversion with builtin ops only, and `LiteRTClassifier`, the LiteRT runner.
* `int8_rows`: the `dynamic_int8` files' word-embedding table as int8 rows with one scale per row.
* `metadata`: MediaPipe `TextClassifier` metadata and the text folding phones need.
* `checks` and `report`: what is refused before writing, what is compared after, `ExportReport`.
* `export_causal_lm` (`causal_lm`): a causal LM into LiteRT files (`lm_litert`, run by `LiteRTCausalLM`) and a
  serving SavedModel that turns prompts into text (`lm_serving`), each checked against the Keras model and
  reported in a `CausalLMExportReport` (`lm_report`).
"""

import kd_tf
from kd_tf.export.causal_lm import DEFAULT_LM_VARIANTS, export_causal_lm
from kd_tf.export.checks import read_texts
from kd_tf.export.litert import (
    LiteRTClassifier,
    convert_to_tflite,
    convert_variants,
    tflite_input_names,
    tflite_operators,
)
from kd_tf.export.lm_litert import LM_VARIANTS, LiteRTCausalLM, convert_causal_lm
from kd_tf.export.lm_report import CausalLMExportReport
from kd_tf.export.metadata import normalize_for_mobile
from kd_tf.export.report import REPORT_JSON, REPORT_MARKDOWN, VARIANTS, ExportError, ExportReport
from kd_tf.export.student import export_student

__all__ = [
    "DEFAULT_LM_VARIANTS",
    "LM_VARIANTS",
    "REPORT_JSON",
    "REPORT_MARKDOWN",
    "VARIANTS",
    "CausalLMExportReport",
    "ExportError",
    "ExportReport",
    "LiteRTCausalLM",
    "LiteRTClassifier",
    "convert_causal_lm",
    "convert_to_tflite",
    "convert_variants",
    "export_causal_lm",
    "export_student",
    "normalize_for_mobile",
    "read_texts",
    "tflite_input_names",
    "tflite_operators",
]

kd_tf._finish_import(__name__)
