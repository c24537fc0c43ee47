"""Typed JSON, both ways: frozen dataclasses (nested, with enums, lists, dicts and tuples) to JSON values and back.
decode() checks every field against its annotation and says which field is wrong and how ("field 'argv[1]':
expected string, got integer 5"); the protocol table (protocol.py) uses it for every request and answer.
Written here rather than taken from a library (pydantic, cattrs): the package has no such dependency, and this is all
the protocol needs."""

from __future__ import annotations

import dataclasses
import enum
import json
import types
from typing import Annotated, Any, TypeVar, Union, get_args, get_origin, get_type_hints

T = TypeVar("T")


def to_wire(obj: Any) -> Any:
    """A dataclass (nested ones, enums, tuples) as JSON values; a SPARSE class leaves its null fields out."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        sparse = getattr(type(obj), "SPARSE", False)
        out = {f.name: to_wire(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
        return {k: v for k, v in out.items() if v is not None} if sparse else out
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_wire(x) for x in obj]
    if isinstance(obj, dict):
        return {k: to_wire(v) for k, v in obj.items()}
    return obj


class Mismatch(ValueError):
    """A value that is not what its type says; the text names the field."""


_HINTS: dict[type, dict[str, Any]] = {}


def hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, Annotated texts kept (resolved once per class)."""
    if cls not in _HINTS:
        _HINTS[cls] = get_type_hints(cls, include_extras=True)
    return _HINTS[cls]


def _json_kind(value: object) -> str:
    return ("null" if value is None else "boolean" if isinstance(value, bool) else "integer" if isinstance(value, int)
            else "number" if isinstance(value, float) else "string" if isinstance(value, str)
            else "list" if isinstance(value, list) else "object" if isinstance(value, dict) else type(value).__name__)


def _got(value: object) -> str:
    if value is None:
        return "null"
    shown = json.dumps(value, default=str)
    return f"{_json_kind(value)} {shown[:40]}{'...' if len(shown) > 40 else ''}"


def decode(cls: type[T], obj: object, *, strict: bool, path: str = "") -> T:
    """An instance of dataclass ``cls`` from a JSON object. strict: an unknown field is an error (requests);
    otherwise ignored (answers). A null field that has a default takes the default."""
    if not isinstance(obj, dict):
        raise Mismatch(f"{_where(path)}expected an object ({cls.__name__}), got {_got(obj)}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = [k for k in obj if k not in fields]
    if unknown and strict:
        takes = ", ".join(fields) or "no fields"
        raise Mismatch(f"unknown field '{_join(path, unknown[0])}' ({cls.__name__} takes {takes})")
    types_ = hints(cls)
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        sub = _join(path, name)
        has_default = f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING
        if name not in obj or (obj[name] is None and has_default):
            if not has_default:
                raise Mismatch(f"missing field '{sub}'")
            continue
        kwargs[name] = _value(types_[name], obj[name], sub, strict)
    return cls(**kwargs)


def _join(path: str, name: str) -> str:
    return f"{path}.{name}" if path else name


def _where(path: str) -> str:
    return f"field '{path}': " if path else ""


def _value(tp: Any, value: Any, path: str, strict: bool) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return _value(args[0], value, path, strict)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return _value(rest[0], value, path, strict)
        for a in rest:
            try:
                return _value(a, value, path, strict)
            except Mismatch:
                continue
        raise Mismatch(f"{_where(path)}expected {type_name(tp)}, got {_got(value)}")
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(value)
        except ValueError:
            choices = ", ".join(json.dumps(m.value) for m in tp)
            raise Mismatch(f"{_where(path)}{json.dumps(value, default=str)[:40]} is not one of {choices}") from None
    if origin is list and isinstance(value, list):
        return [_value(args[0], v, f"{path}[{i}]", strict) for i, v in enumerate(value)]
    if origin is tuple and isinstance(value, list) and len(value) == len(args):
        return tuple(_value(a, v, f"{path}[{i}]", strict) for i, (a, v) in enumerate(zip(args, value, strict=True)))
    if origin is dict and isinstance(value, dict):
        return {k: _value(args[1], v, f"{path}[{json.dumps(k)}]", strict) for k, v in value.items()}
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return decode(tp, value, strict=strict, path=path)
    if tp in (bool, str) and isinstance(value, tp):
        return value
    if tp is int and isinstance(value, int) and not isinstance(value, bool):
        return value
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    raise Mismatch(f"{_where(path)}expected {type_name(tp)}, got {_got(value)}")


def type_name(tp: Any) -> str:
    """A type as docs/protocol.md and the errors write it: string, [integer], {string: string}, `Report`."""
    origin, args = get_origin(tp), get_args(tp)
    if origin is Annotated:
        return type_name(args[0])
    if origin in (Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return " or ".join(json.dumps(m.value) for m in tp)
    if origin is list:
        return f"[{type_name(args[0])}]"
    if origin is tuple:
        return f"[{', '.join(type_name(a) for a in args)}]"
    if origin is dict:
        return f"{{{type_name(args[0])}: {type_name(args[1])}}}"
    names = {str: "string", int: "integer", bool: "boolean", float: "number", type(None): "null", Any: "any"}
    if tp in names:
        return names[tp]
    return f"`{tp.__name__}`" if isinstance(tp, type) and dataclasses.is_dataclass(tp) else str(tp)


def doc_of(tp: Any) -> str:
    """The text of an Annotated[type, "text"] field."""
    if get_origin(tp) is Annotated:
        return next((m for m in get_args(tp)[1:] if isinstance(m, str)), "")
    return ""
