"""Examples from CSV, TSV and JSON Lines files: `load_table`."""

import csv
import io
import os

from kd_tf.classify.validation import ExampleCollector
from kd_tf.text_files import DataError, decode_utf8, jsonl_rows

TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".tab": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl"}


def _table_format(path, format):
    if format is None:
        format = TABLE_FORMATS.get(os.path.splitext(path)[1].lower())
        if format is None:
            raise DataError(
                f"{path}: cannot tell the format from the extension; pass format='csv', 'tsv' or 'jsonl'."
            )
    if format not in set(TABLE_FORMATS.values()):
        raise ValueError(f"format must be 'csv', 'tsv' or 'jsonl', not {format!r}.")
    return format


def _delimited_rows(path, text, format, header, columns, counts):
    """Yields (line number, {role: value}) from a CSV or TSV text."""
    # Python's csv refuses fields over 128 KiB by default (a long review is not a quoting error):
    # no field can be longer than the file, so that is the limit.
    csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    if format == "csv":
        reader = csv.reader(io.StringIO(text, newline=""), strict=True)
        fix = (
            'Quote fields that contain commas, quotes or line breaks ("like, this"), or '
            "check for a missing or extra delimiter."
        )
    else:
        reader = csv.reader(
            io.StringIO(text, newline=""), delimiter="\t", quoting=csv.QUOTE_NONE, strict=True
        )
        fix = "A tab inside a text splits it in two: replace tabs in texts, or save as CSV."
    width, names, line = None, None, 1
    while True:
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as e:
            raise DataError(f"{path}, line {reader.line_num}: {e}. {fix}") from None
        if not any(field.strip() for field in row):
            counts["blank_lines"] += 1
        elif width is None:
            width = len(row)
            if header:
                names = [field.strip() for field in row]
            index = {
                role: _column_index(path, line, spec, names, width, role) for role, spec in columns.items()
            }
            if not header:
                yield line, {role: row[i] for role, i in index.items()}
        elif len(row) != width:
            raise DataError(
                f"{path}, line {line}: {len(row)} fields, but the "
                f"{'header' if header else 'first row'} has {width}. {fix}"
            )
        else:
            yield line, {role: row[i] for role, i in index.items()}
        line = reader.line_num + 1


def _column_index(path, line, spec, names, width, role):
    if isinstance(spec, int) and not isinstance(spec, bool):
        if not -width <= spec < width:
            raise DataError(
                f"{path}, line {line}: {role}={spec} but rows have {width} columns "
                f"(0..{width - 1}). Choose a column that exists."
            )
        return spec
    if names is None:
        raise DataError(
            f"{path}: {role}={spec!r} names a column, but header=False; name columns "
            f"by position (0 is the first)."
        )
    if spec not in names:
        raise DataError(
            f"{path}, line {line}: no column {spec!r} for the {role}; the header has "
            f"{names}. Pass one of these as {role}, or header=False if the first "
            f"line is data."
        )
    return names.index(spec)


def load_table(
    path,
    text_column,
    label_column,
    *,
    text_pair_column=None,
    format=None,
    header=True,
    label_names=None,
    empty_text="error",
    clean=False,
    where=None,
    limit=None,
):
    """Examples from a CSV, TSV or JSON Lines file.

    CSV follows the usual quoting rules; TSV is split on tabs with no quoting
    (as GLUE distributes it, so texts may contain quote characters); JSON
    Lines holds one object per line. Files are read as UTF-8 (a leading BOM
    is dropped), and both ends of every text are stripped.

    Labels may be names (`"positive"`) or integer ids (`1`). With
    `label_names`, a label matching a name gets that name's id, and an
    integer `i` gets id `i`; anything else is an error. Without
    `label_names` they are inferred: integer labels keep their value as id
    (names `"0"`, `"1"`, ...), other labels are sorted by name. Pass
    `label_names` (e.g. `train.label_names`) when loading a second file of
    the same task, so every label keeps its id.

    Args:
        path: the file.
        text_column: column (header name, or position from 0) or JSON key of
            the text.
        label_column: column or key of the label; `None` for unlabelled text.
        text_pair_column: column or key of the second text of sentence-pair
            tasks, or `None`.
        format: `"csv"`, `"tsv"` or `"jsonl"`; `None` guesses from the
            extension (`.csv`, `.tsv`/`.tab`, `.jsonl`/`.ndjson`).
        header: whether the first non-blank line of a CSV/TSV names the
            columns; with `False`, columns are positions.
        label_names: the label set, in id order, or `None` to infer it.
        empty_text: policy for empty or whitespace-only texts: `"error"`
            raises, `"skip"` drops the row and counts it in
            `report["skipped_empty_text"]` (logged as a warning).
        clean: `True` applies `clean_text`, or a function `str -> str`.
        where: keep only rows whose columns hold given values, as a dict
            `{column: value or list of values}` compared as stripped
            strings; the other rows are not validated and are counted in
            `report["filtered_out"]`.
        limit: read only the first `limit` (kept) data rows.

    Returns:
        A `TextDataset` in file order with ids `"<folder>/<file>:<line>"`
        (the row's first line, counted from 1 including the header).

    Raises:
        DataError: for a missing or empty file, a missing column or key,
            a row whose field count differs from the header, bytes that are
            not UTF-8, invalid JSON, an empty text (unless skipped), an empty
            label, a label outside `label_names`, or a single class (checked
            when the whole file was read, not on a `limit` slice). The
            message names the file, the line and the fix.

    Example:
    ```python
    dev = load_table("tests/data/sst2/dev.tsv", "sentence", "label",
                     label_names=("negative", "positive"))
    dev.ids[0], dev.labels[0]  # ('sst2/dev.tsv:2', 1)
    ```
    """
    path = os.fspath(path)
    format = _table_format(path, format)
    if not os.path.isfile(path):
        what = "a folder, not a file" if os.path.isdir(path) else "no such file"
        raise DataError(f"{path}: {what}. Check the path (relative paths start at {os.getcwd()}).")
    with open(path, "rb") as f:
        text = decode_utf8(
            f.read(),
            path,
            "Re-save the file as UTF-8 (in a spreadsheet: "
            "'CSV UTF-8'), or convert it with iconv -f <encoding> -t utf-8.",
        )
    if not text.strip():
        raise DataError(f"{path}: the file is empty. Check that it was written completely.")
    columns = {"text_column": text_column, "text_pair_column": text_pair_column, "label_column": label_column}
    columns = {role: spec for role, spec in columns.items() if spec is not None}
    wanted = {
        f"where[{column!r}]": {
            str(v).strip()
            for v in (values if isinstance(values, (list, tuple, set, frozenset)) else [values])
        }
        for column, values in (where or {}).items()
    }
    columns.update({role: column for role, column in zip(wanted, where or {})})
    counts = {"blank_lines": 0, "filtered_out": 0}
    if format == "jsonl":
        rows = jsonl_rows(path, text, columns, counts)
    else:
        rows = _delimited_rows(path, text, format, header, columns, counts)
    parent = os.path.basename(os.path.dirname(os.path.abspath(path)))
    id_prefix = f"{parent}/{os.path.basename(path)}" if parent else os.path.basename(path)
    collector = ExampleCollector(
        f"{path} ({format})",
        clean=clean,
        empty_text=empty_text,
        labelled=label_column is not None,
        paired=text_pair_column is not None,
    )
    kept, complete = 0, True
    for line, values in rows:
        if any(str(values[role]).strip() not in allowed for role, allowed in wanted.items()):
            counts["filtered_out"] += 1
            continue
        if limit is not None and kept >= limit:
            complete = False
            break
        kept += 1
        collector.add(
            f"{path}, line {line}",
            f"{id_prefix}:{line}",
            values["text_column"],
            pair=values.get("text_pair_column"),
            label=values.get("label_column"),
        )
    if not kept:
        if counts["filtered_out"]:
            raise DataError(
                f"{path}: none of its {counts['filtered_out']} rows matches "
                f"where={where!r}. Check the column and its values."
            )
        raise DataError(
            f"{path}: no data rows{' after the header' if header else ''}. Check "
            f"that the file was written completely"
            f"{', or pass header=False if it has no header' if header else ''}."
        )
    return collector.build(label_names=label_names, complete=complete, **counts)
