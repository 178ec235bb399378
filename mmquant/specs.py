"""Spec strings: ``"name"`` or ``"name:key=value,key=value"`` parsed and written back.

Tuple-valued parameters are written with ``;`` between items (``"e8:q=14,betas=0.2;0.3;0.4;0.5"``);
values are converted to the dataclass field's annotated type, and :func:`format_spec` writes only
the parameters that differ from their defaults, so that a spec string is canonical.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mmquant.core import Quantizer

__all__ = ["parse_spec", "format_spec"]


def parse_spec(spec: str) -> tuple[str, dict[str, str]]:
    """Split ``"name:k=v,k2=v2"`` into ``("name", {"k": "v", "k2": "v2"})`` (values unparsed)."""
    if not isinstance(spec, str):
        raise TypeError(f"a quantizer spec must be a string, got {type(spec).__name__}")
    spec = spec.strip()
    name, _, rest = spec.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"empty quantizer name in spec {spec!r}")
    params: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, eq, value = item.partition("=")
            key = key.strip()
            if not eq or not key:
                raise ValueError(
                    f"malformed parameter {item!r} in spec {spec!r}: expected key=value"
                )
            if key in params:
                raise ValueError(f"parameter {key!r} given twice in spec {spec!r}")
            params[key] = value.strip()
    return name, params


def _convert(value: str, tp: Any, key: str, spec: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value.lower() == "none" and type(None) in args:
            return None
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(value, a, key, spec)
            except ValueError:
                continue
        raise ValueError(f"cannot parse {key}={value!r} in spec {spec!r}")
    if origin is tuple:
        item_tp = args[0] if args else str
        items = [v for v in value.split(";") if v.strip()]
        return tuple(_convert(v.strip(), item_tp, key, spec) for v in items)
    try:
        if tp is bool:
            low = value.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if tp is int:
            return int(value)
        if tp is float:
            return float(value)
        if tp is str:
            return value
    except ValueError:
        pass
    else:
        raise ValueError(f"unsupported parameter type {tp!r} for {key!r}")
    tname = getattr(tp, "__name__", str(tp))
    raise ValueError(f"cannot parse {key}={value!r} in spec {spec!r}: expected {tname}")


def _format_value(v: Any) -> str:
    if isinstance(v, tuple):
        return ";".join(_format_value(i) for i in v)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    return str(v)


def format_spec(q: Quantizer) -> str:
    """Canonical spec string of ``q``: its name and the parameters that differ from the defaults."""
    parts = []
    for f in dataclasses.fields(q):  # type: ignore[arg-type]
        if not f.init:
            continue
        v = getattr(q, f.name)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if default is dataclasses.MISSING or v != default:
            parts.append(f"{f.name}={_format_value(v)}")
    return q.name + (":" + ",".join(parts) if parts else "")
