"""Reading and writing configs: dataclass trees <-> plain dicts, YAML files and dotted
``key=value`` overrides. An unknown key fails naming the closest valid key and the valid
keys at that level; values of an override are parsed as YAML scalars, so
``train.lr=0.01``, ``model.anchors.ratios=[0.5,1,2]`` and ``train.amp=false`` all work.
On the command line, KEY_ALIASES (Ultralytics' spellings among them: ``imgsz=``,
``batch=``, ``device=``, ...) stand for the full keys of a run's config.
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import types
import typing
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration file or override that cannot be applied."""


# Short keys of a run's config (RunConfig) accepted in ``key=value`` overrides.
KEY_ALIASES = {
    "epochs": "train.epochs",
    "batch": "train.batch_size",
    "lr": "train.lr",
    "data": "data.source",
    "imgsz": "model.input_size",
    "device": "train.device",
    "workers": "data.workers",
    "cache": "data.cache",
    "patience": "train.patience",
    "weights": "train.weights",
}
SUGGEST_CUTOFF = 0.6  # difflib's similarity below which no key is suggested


def expand_aliases(items: list[str]) -> list[str]:
    """``["imgsz=384", "train.lr=0.02"]`` -> ``["model.input_size=384", "train.lr=0.02"]``."""
    out = []
    for item in items:
        key, sep, value = item.partition("=")
        out.append(f"{KEY_ALIASES.get(key.strip(), key.strip())}{sep}{value}")
    return out


def leaf_keys(cfg: Any, prefix: str = "") -> list[str]:
    """The dotted names of every leaf field of dataclass instance ``cfg``."""
    out: list[str] = []
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        out += leaf_keys(value, f"{prefix}{f.name}.") if dataclasses.is_dataclass(value) else [prefix + f.name]
    return out


def closest_key(key: str, valid: list[str]) -> str | None:
    """The valid dotted key most like ``key``, compared whole and by last component
    (``lr0`` -> ``train.lr``, ``model.batch_size`` -> ``train.batch_size``); None if none is close."""
    last = key.rsplit(".", 1)[-1]

    def score(name: str) -> tuple[float, float]:
        whole = difflib.SequenceMatcher(None, key, name).ratio()
        part = difflib.SequenceMatcher(None, last, name.rsplit(".", 1)[-1]).ratio()
        return max(whole, part), whole

    best = max(valid, key=score, default=None)
    return best if best is not None and score(best)[0] >= SUGGEST_CUTOFF else None


def to_dict(cfg: Any) -> dict[str, Any]:
    """A plain dict (lists for tuples) that YAML and torch.load(weights_only=True) accept."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v

    return plain(cfg)


def _coerce(value: Any, tp: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        for arg in args[:-1]:  # the first type the value fits, in the order written
            try:
                return _coerce(value, arg, where)
            except ConfigError:
                pass
        return _coerce(value, args[-1], where)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return from_dict(tp, value, where)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (elem, *_rest) = typing.get_args(tp)
        return tuple(_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value))
    if origin is list:
        if not isinstance(value, (list, tuple)):
            value = [value]
        (elem,) = typing.get_args(tp)
        return [_coerce(v, elem, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, str):
            value = _float_text(value)  # YAML 1.1 reads 8e-5 (no dot) as a string
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{where}: expected a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if value is None:
            return "none"
        if not isinstance(value, (str, int, float)) or isinstance(value, bool):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _float_text(text: str) -> float | str:
    try:
        return float(text)
    except ValueError:
        return text


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def from_dict(cls: type, data: dict[str, Any], where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``; unknown keys fail naming the valid ones."""
    types_ = _field_types(cls)
    unknown = sorted(set(data) - set(types_))
    if unknown:
        prefix = f"{where}." if where else ""
        raise ConfigError(
            f"unknown key(s) {', '.join(prefix + k for k in unknown)}; "
            f"valid keys{' under ' + where if where else ''}: {', '.join(types_)}"
        )
    kwargs = {k: _coerce(v, types_[k], f"{where}.{k}" if where else k) for k, v in data.items()}
    return cls(**kwargs)


def merge(cfg: Any, data: dict[str, Any], where: str = "", root: Any = None) -> Any:
    """Apply a (possibly partial, nested) mapping onto an existing dataclass instance
    (``root``: the tree's top, whose keys an unknown key is compared with)."""
    types_ = _field_types(type(cfg))
    root = cfg if root is None else root
    for key, value in data.items():
        path = f"{where}.{key}" if where else key
        if key not in types_:
            guess = closest_key(path, leaf_keys(root))
            raise ConfigError(
                f"unknown key {path!r}; {f'did you mean {guess}? ' if guess else ''}"
                f"valid keys{' under ' + where if where else ''}: {', '.join(types_)}"
            )
        current = getattr(cfg, key)
        if dataclasses.is_dataclass(current) and isinstance(value, dict):
            merge(current, value, path, root)
        else:
            setattr(cfg, key, _coerce(value, types_[key], path))
    return cfg


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """``["a.b=1", "c=[1,2]"]`` -> ``{"a": {"b": 1}, "c": [1, 2]}``."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} is not of the form key=value")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: cannot parse value: {e}") from None
        node = out
        parts = key.strip().split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"override {item!r} conflicts with an earlier one")
        node[parts[-1]] = value
    return out


def apply_overrides(cfg: Any, items: list[str]) -> Any:
    return merge(cfg, parse_overrides(items))


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def save_yaml(cfg: Any, path: str | Path) -> None:
    Path(path).write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
