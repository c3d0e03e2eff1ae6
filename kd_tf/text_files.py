"""Reading text files: UTF-8 with the bad line named, JSON Lines records, and `DataError`.

The lowest layer of kd-tf's data handling, shared by every task wing (`kd_tf.classify` tables,
`kd_tf.lm` corpora): each failure is a `DataError` that names the file, the line and the fix.
"""

import json

__all__ = ["DataError", "decode_utf8", "jsonl_rows"]


class DataError(ValueError):
    """Input data that kd-tf refuses to use.

    The message names where the problem is (file and line, archive member or
    dataset example) and how to fix it.

    Example:
    ```python
    try:
        load_table("missing.csv", "text", "label")
    except DataError as e:
        print(e)
    # missing.csv: no such file. ...
    ```
    """


def decode_utf8(data, where, fix):
    """Decodes UTF-8 bytes (a leading BOM is dropped), naming the bad line."""
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        column = e.start - (data.rfind(b"\n", 0, e.start) + 1) + 1
        raise DataError(
            f"{where}, line {line}: the byte {data[e.start : e.end].hex(' ')} at "
            f"byte {column} of the line is not valid UTF-8. {fix}"
        ) from None


def jsonl_rows(path, text, columns, counts):
    """Yields `(line number, {role: value})` from a JSON Lines text.

    Args:
        path: the file's path, for messages.
        text: the decoded file.
        columns: `{role: key}`: the keys every record must hold.
        counts: a dict whose `"blank_lines"` is incremented for each blank line.

    Raises:
        DataError: for a line that is not a JSON object or lacks a key, naming the line and the fix.
    """
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    for line, content in enumerate(lines, 1):
        if not content.strip():
            counts["blank_lines"] += 1
            continue
        try:
            record = json.loads(content)
        except json.JSONDecodeError as e:
            raise DataError(
                f"{path}, line {line}: not valid JSON ({e.msg}, column {e.colno}). "
                f"Each line of a JSON Lines file holds one JSON object."
            ) from None
        if not isinstance(record, dict):
            raise DataError(
                f"{path}, line {line}: a JSON {type(record).__name__}, not an "
                f"object. Write one object per line, like "
                f'{{"text": "...", "label": 1}}.'
            )
        for role, key in columns.items():
            if key not in record:
                raise DataError(
                    f"{path}, line {line}: no key {key!r} for the {role}; this line "
                    f"has {sorted(record)}. Add it, or pass the right {role}."
                )
        yield line, {role: record[key] for role, key in columns.items()}
