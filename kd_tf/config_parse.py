"""Typed YAML for `kd_tf.config`: nested dicts checked into dataclasses, key by key.

A config dataclass declares each field with `field(default, doc, check=..., choices=...)`; `build` turns
nested dicts into those dataclasses and refuses an unknown key (suggesting the close one), a wrong type, a
non-finite number, a value outside `choices` or one that fails `check`, naming the dotted key.
`refuse_duplicate_keys` catches a key written twice in one YAML mapping (YAML itself keeps the last),
`apply_overrides` applies `--set key=value` strings and `describe_fields` documents every key.
"""

from __future__ import annotations

import dataclasses
import math
import typing

import yaml


class ConfigError(ValueError):
    """A configuration value is unknown, of the wrong type or impossible."""


def field(default, doc, check=None, choices=None, default_factory=None):
    """A documented, checked dataclass field of a config section.

    Args:
        default: the default value (ignored with `default_factory`).
        doc: what the key means (shown by `describe_fields` and in error messages).
        check: `(predicate, words)`: a value (each item of a list) must satisfy `predicate`, else the
            error says "it <words>".
        choices: the allowed values, or None.
        default_factory: a function returning the default (lists, nested sections).

    Returns:
        A `dataclasses.field`.

    Example:
    ```python
    epochs: int = field(2, "maximum epochs", check=(lambda v: v >= 1, "must be >= 1"))
    ```
    """
    metadata = {"doc": doc, "check": check, "choices": choices}
    if default_factory is not None:
        return dataclasses.field(default_factory=default_factory, metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def _type_name(tp):
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin in (list, typing.List):
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if dataclasses.is_dataclass(tp):
        return f"a mapping of {tp.__name__} fields"
    return {
        int: "an integer",
        float: "a number",
        str: "a string",
        bool: "true/false",
        type(None): "null",
    }.get(tp, getattr(tp, "__name__", str(tp)))


def _coerce(value, tp, key):
    """Returns `value` as type `tp` or raises ConfigError naming `key`."""
    origin = typing.get_origin(tp)
    if origin is typing.Union:
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, key)
            except ConfigError as e:
                errors.append(e)
        inner = [a for a in args if a is not type(None)]
        if len(inner) == 1 and _section_type(inner[0]) is not None:
            raise errors[0]  # an optional section: its own message names the nested key
        raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")
    if origin in (list, typing.List):
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")
        (item,) = typing.get_args(tp)
        return [_coerce(v, item, f"{key}[{i}]") for i, v in enumerate(value)]
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}.")
        return build(tp, value, key + ".")
    if tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            if not math.isfinite(value):
                raise ConfigError(f"{key}: {value!r} is not a finite number; give a finite value.")
            return float(value)
    elif tp is str:
        if isinstance(value, str):
            return value
    raise ConfigError(f"{key}: expected {_type_name(tp)}, got {value!r}.")


def build(cls, values, prefix=""):
    """Builds the dataclass `cls` from a dict, checking every value (see the module docstring).

    Args:
        cls: a config dataclass whose fields come from `field`.
        values: a dict of its keys.
        prefix: the dotted key of `values` (for messages), e.g. `"teacher."`.

    Returns:
        An instance of `cls`.

    Raises:
        ConfigError: naming the dotted key of the first bad value.

    Example:
    ```python
    build(TeacherConfig, {"epochs": 1}, "teacher.").epochs  # 1
    ```
    """
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        import difflib

        key = unknown[0]
        close = difflib.get_close_matches(key, list(fields), n=1)
        hint = f" Did you mean {prefix}{close[0]}?" if close else ""
        raise ConfigError(
            f"{prefix}{key}: unknown key.{hint} Known keys: {', '.join(prefix + k for k in fields)}."
        )
    kwargs = {}
    for name, value in values.items():
        key = prefix + name
        f = fields[name]
        value = _coerce(value, hints[name], key)
        choices, check = f.metadata.get("choices"), f.metadata.get("check")
        if value is not None and choices and value not in choices:
            raise ConfigError(f"{key}: {value!r} is not one of {', '.join(choices)}.")
        if (
            value is not None
            and check
            and not all(check[0](v) for v in (value if isinstance(value, list) else [value]))
        ):
            raise ConfigError(f"{key}: {value!r} is impossible: it {check[1]} ({f.metadata['doc']}).")
        kwargs[name] = value
    return cls(**kwargs)


def apply_overrides(values, overrides):
    """Applies `key=value` overrides (YAML values, dotted keys) to nested dicts.

    Args:
        values: nested dicts, e.g. read from YAML.
        overrides: strings like `"teacher.epochs=1"` or `"student.init_layers=[0, 5]"`.

    Returns:
        A new nested dict.

    Raises:
        ConfigError: if an override is not `key=value`.

    Example:
    ```python
    apply_overrides({"teacher": {"epochs": 2}}, ["teacher.epochs=1"])  # {'teacher': {'epochs': 1}}
    ```
    """
    import copy

    values = copy.deepcopy(values or {})
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: write key=value, e.g. teacher.epochs=1.")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        node = values
        for part in parts[:-1]:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise ConfigError(f"--set {item!r}: {part} is not a section.")
        node[parts[-1]] = yaml.safe_load(raw) if raw.strip() else None
    return values


def refuse_duplicate_keys(node, path, prefix=""):
    """Raises ConfigError for a key written twice in one mapping (YAML would keep the last silently).

    Args:
        node: a composed YAML node (`yaml.compose(text)`).
        path: the file, for the message.
        prefix: the dotted key of `node`.

    Raises:
        ConfigError: naming the key and both lines.

    Example:
    ```python
    refuse_duplicate_keys(yaml.compose("seed: 1\\nseed: 2\\n"), "c.yaml")  # ConfigError: seed ... twice
    ```
    """
    if isinstance(node, yaml.MappingNode):
        lines = {}
        for key_node, value_node in node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            line = key_node.start_mark.line + 1
            if key is not None and key in lines:
                raise ConfigError(
                    f"{path}: {prefix}{key} is written twice (lines {lines[key]} and {line}); "
                    f"YAML would keep only the second. Delete one of them."
                )
            if key is not None:
                lines[key] = line
            refuse_duplicate_keys(value_node, path, f"{prefix}{key}." if key is not None else prefix)
    elif isinstance(node, yaml.SequenceNode):
        for item in node.value:
            refuse_duplicate_keys(item, path, prefix)


def describe_fields(cls, prefix=""):
    """Lines `key: doc` for every field of a config dataclass, nested sections (and list items) included.

    Example:
    ```python
    describe_fields(RunConfig)[0]  # 'run_name: folder name of the run under output_dir ...'
    ```
    """
    lines = []
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = _section_type(hints[f.name])
        if tp is not None and dataclasses.is_dataclass(hints[f.name]):
            lines += describe_fields(tp, f"{prefix}{f.name}.")
        elif tp is not None:  # an optional section or a list of them: the key itself means something
            item = "[]" if typing.get_origin(hints[f.name]) in (list, typing.List) else ""
            lines.append(f"{prefix}{f.name}{item}: {f.metadata['doc']}")
            lines += describe_fields(tp, f"{prefix}{f.name}{item}.")
        else:
            lines.append(f"{prefix}{f.name}: {f.metadata['doc']}")
    return lines


def _section_type(tp):
    """The dataclass of a section field (`X`, `Optional[X]` or `List[X]`), or None."""
    if dataclasses.is_dataclass(tp):
        return tp
    for arg in typing.get_args(tp):
        if dataclasses.is_dataclass(arg):
            return arg
    return None


__all__ = ["ConfigError", "apply_overrides", "build", "describe_fields", "field", "refuse_duplicate_keys"]
