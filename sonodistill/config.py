"""Typed configs: dataclasses loaded from YAML and overridden by ``key=value`` arguments.

Used by every stage (shard building, pretraining, downstream, KD recipes). Written here rather than taken from
a library because none of the small ones (OmegaConf structured configs come close) gives
one-line errors that list the valid keys and still round-trips plain YAML without extra deps.

Rules:
- nested dataclasses map to nested YAML mappings and to dotted keys (``train.lr=3e-4``);
- an unknown key is an error that lists the valid keys at that level;
- a value of the wrong type is an error naming the key and the expected type;
- several YAML files may be layered (a recipe's preset, then a user's file), later files winning;
- a renamed key keeps working for a while: a config class lists ``RENAMED = {"old.key": "new.key"}``
  (keys relative to that class, sections too), and an old key in a file or an override is moved to
  its new place with a one-line deprecation warning naming the new key;
- ``save_config`` writes the resolved config (atomically) next to a run's outputs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import types
import typing
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from sonodistill.atomic import write_text
from sonodistill.errors import UserError
from sonodistill.yaml_file import read_yaml

T = TypeVar("T")
log = logging.getLogger(__name__)


class ConfigError(UserError):
    """A config file or override that does not fit the config dataclass."""


def _type_name(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in get_args(tp))
    if origin is not None:
        return repr(tp).replace("typing.", "")
    return getattr(tp, "__name__", repr(tp))


def _coerce(value: Any, tp: Any, key: str, where: str) -> Any:
    """Convert ``value`` (from YAML or a CLI string) to ``tp`` or raise a ConfigError."""
    if tp is Any:
        return value
    origin = get_origin(tp)
    if origin is Literal:
        return _literal(value, tp, key, where)
    if origin in (Union, types.UnionType):
        return _union(value, tp, key, where)
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise _mismatch(value, tp, key, where)
        return _build(tp, value, where, prefix=key + ".")
    if origin in (list, tuple, Sequence, typing.Sequence):
        return _sequence(value, tp, key, where)
    if origin is dict:
        if isinstance(value, str):
            value = yaml.safe_load(value)
        if not isinstance(value, dict):
            raise _mismatch(value, tp, key, where)
        kt, vt = get_args(tp) or (Any, Any)
        return {_coerce(k, kt, key, where): _coerce(v, vt, f"{key}.{k}", where) for k, v in value.items()}
    if tp in _SCALARS:
        return _SCALARS[tp](value, tp, key, where)
    if isinstance(value, tp):
        return value
    raise _mismatch(value, tp, key, where)


def _mismatch(value: Any, tp: Any, key: str, where: str) -> ConfigError:
    return ConfigError(f"{where}: key '{key}' expects {_type_name(tp)}, got {value!r}")


def _literal(value: Any, tp: Any, key: str, where: str) -> Any:
    choices = get_args(tp)
    if isinstance(value, bool):  # YAML reads an unquoted no (off, false) or yes as a boolean
        word = "yes" if value else "no"
        if word in choices:
            return word
    if value in choices:
        return value
    for c in choices:  # CLI strings for non-string literals
        if isinstance(value, str) and str(c) == value:
            return c
    raise _mismatch(value, tp, key, where)


def _union(value: Any, tp: Any, key: str, where: str) -> Any:
    args = get_args(tp)
    if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
        if type(None) in args:
            return None
    for a in args:
        if a is type(None):
            continue
        try:
            return _coerce(value, a, key, where)
        except ConfigError:
            pass
    raise _mismatch(value, tp, key, where)


def _sequence(value: Any, tp: Any, key: str, where: str) -> Any:
    origin, args = get_origin(tp), get_args(tp)
    if isinstance(value, str):
        value = parse_list(value, strings=args == (str,))
    if not isinstance(value, (list, tuple)):
        raise _mismatch(value, tp, key, where)
    if origin is tuple and args and args[-1] is not Ellipsis:
        if len(args) != len(value):
            raise _mismatch(value, tp, key, where)
        return tuple(_coerce(v, a, key, where) for v, a in zip(value, args))
    inner = args[0] if args else Any
    out = [_coerce(v, inner, key, where) for v in value]
    return tuple(out) if origin is tuple else out


def _bool(value: Any, tp: Any, key: str, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "yes", "1", "on"):
        return True
    if isinstance(value, str) and value.lower() in ("false", "no", "0", "off"):
        return False
    raise _mismatch(value, tp, key, where)


def _int(value: Any, tp: Any, key: str, where: str) -> int:
    if isinstance(value, bool):
        raise _mismatch(value, tp, key, where)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, str):
        try:
            return int(value.replace("_", ""))
        except ValueError:
            try:
                f = float(value)
            except ValueError:
                raise _mismatch(value, tp, key, where) from None
            if f.is_integer():
                return int(f)
    raise _mismatch(value, tp, key, where)


def _float(value: Any, tp: Any, key: str, where: str) -> float:
    if isinstance(value, bool):
        raise _mismatch(value, tp, key, where)
    if isinstance(value, (int, float)):
        out = float(value)
    elif isinstance(value, str):
        try:
            out = float(value)
        except ValueError:
            raise _mismatch(value, tp, key, where) from None
    else:
        raise _mismatch(value, tp, key, where)
    if math.isnan(out):  # compares false with every bound, so no range check downstream would catch it
        raise ConfigError(f"{where}: key '{key}' expects a number, not NaN")
    return out


def _str(value: Any, tp: Any, key: str, where: str) -> str:
    if isinstance(value, (str, int, float)) and not isinstance(value, bool):
        return str(value)
    raise _mismatch(value, tp, key, where)


_SCALARS = {bool: _bool, int: _int, float: _float, str: _str}


def split_top_level(text: str, sep: str = ",") -> list[str]:
    """``text`` split at ``sep`` outside brackets: ``a,b?x=[1,2]`` -> ``['a', 'b?x=[1,2]']``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        if ch in "[{(":
            depth += 1
        elif ch in "]})":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i].strip())
            start = i + 1
    parts.append(text[start:].strip())
    return [p for p in parts if p]


def parse_list(text: str, strings: bool = False) -> Any:
    """A list from the command line: YAML flow syntax, or a bare ``a,b`` list. Items that YAML cannot
    parse as plain scalars (``[kd:hdkd?model.channels=[64,128,192]]``) are split at top-level commas.
    ``strings``: every item as written (a list of names: ``[007,no]`` stays ``['007', 'no']``)."""
    text = text.strip()
    if not text.startswith("["):
        return [v for v in text.split(",") if v != ""]
    try:
        return yaml.load(text, Loader=yaml.BaseLoader) if strings else yaml.safe_load(text)  # noqa: S506
    except yaml.YAMLError:
        if not text.endswith("]"):
            raise
        return split_top_level(text[1:-1])


def config_fields(cls: type) -> dict[str, Any]:
    hints = get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls) if f.init}


def valid_keys(cls: type, prefix: str = "") -> list[str]:
    """All dotted leaf keys of a config dataclass (what ``key=value`` accepts)."""
    out: list[str] = []
    for name, tp in config_fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out.extend(valid_keys(tp, prefix + name + "."))
        else:
            out.append(prefix + name)
    return out


def _refuse_unknown(fields: dict[str, Any], data: dict, where: str, prefix: str) -> None:
    unknown = [k for k in data if k not in fields]
    if unknown:
        raise ConfigError(
            f"{where}: unknown key '{prefix}{unknown[0]}'; valid keys: " + ", ".join(prefix + k for k in fields)
        )


def _build(cls: type[T], data: dict, where: str, prefix: str = "") -> T:
    fields = config_fields(cls)
    _refuse_unknown(fields, data, where, prefix)
    kwargs = {k: _coerce(v, fields[k], prefix + k, where) for k, v in data.items()}
    try:
        return cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{where}: {exc}") from None


def to_dict(cfg: Any) -> dict:
    """A plain, YAML-safe dict of a config (tuples become lists)."""

    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v):
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        if isinstance(v, Path):
            return str(v)
        return v

    return plain(cfg)


def _set_dotted(tree: dict, key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        child = node.get(p)
        if not isinstance(child, dict):
            child = {}
            node[p] = child
        node = child
    node[parts[-1]] = value


def _check_override_key(cls: type, key: str) -> Any:
    """Return the field type of a dotted key or raise with the valid keys."""
    tp: Any = cls
    parts = key.split(".")
    for i, p in enumerate(parts):
        if not dataclasses.is_dataclass(tp):
            raise ConfigError(f"override '{key}': '{'.'.join(parts[:i])}' is not a section")
        fields = config_fields(tp)
        if p not in fields:
            raise ConfigError(f"override: unknown key '{key}'; valid keys: " + ", ".join(valid_keys(cls)))
        tp = fields[p]
    return tp


def renamed_keys(cls: type, prefix: str = "") -> dict[str, str]:
    """Every deprecated dotted key of ``cls`` (its own ``RENAMED`` and its sections') -> its new key."""
    out = {prefix + old: prefix + new for old, new in getattr(cls, "RENAMED", {}).items()}
    for name, tp in config_fields(cls).items():
        if dataclasses.is_dataclass(tp):
            out.update(renamed_keys(tp, prefix + name + "."))
    return out


def _warn_renamed(where: str, old: str, new: str) -> None:
    if where:  # "" reads a config this project saved itself (an older run's): no one to warn
        log.warning(f"{where}: '{old}' is deprecated, use '{new}' (the old key still works for now)")


def rename_key(cls: type, key: str, where: str = "override") -> str:
    """A dotted override key with a deprecated prefix moved to its new name (warned once per use)."""
    for old, new in renamed_keys(cls).items():
        if key == old or key.startswith(old + "."):
            moved = new + key[len(old) :]
            _warn_renamed(where, key, moved)
            return moved
    return key


def _pop_dotted(tree: dict, key: str) -> tuple[bool, Any]:
    parts = key.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.get(p)
        if not isinstance(node, dict):
            return False, None
    if parts[-1] not in node:
        return False, None
    return True, node.pop(parts[-1])


_MISSING = object()


def _get_dotted(tree: dict, key: str) -> Any:
    node: Any = tree
    for p in key.split("."):
        if not isinstance(node, dict) or p not in node:
            return _MISSING
        node = node[p]
    return node


def _drop_empty_stale(tree: dict, cls: type, key: str) -> None:
    """Remove the parents of a moved key that it left empty and that are no section of ``cls``."""
    parts = key.split(".")[:-1]
    while parts:
        parent = ".".join(parts)
        node = _get_dotted(tree, parent)
        try:
            _check_override_key(cls, parent)
            return  # still a valid section: keep it
        except ConfigError:
            pass
        if node != {}:
            return
        _pop_dotted(tree, parent)
        parts = parts[:-1]


def apply_renames(cls: type, tree: dict, where: str) -> dict:
    """Move every deprecated key of ``tree`` (a YAML mapping for ``cls``) to its new name, in place."""
    for old, new in renamed_keys(cls).items():
        found, value = _pop_dotted(tree, old)
        if not found:
            continue
        _warn_renamed(where, old, new)
        if _get_dotted(tree, new) is not _MISSING:
            raise ConfigError(f"{where}: both '{old}' and its new name '{new}' are given; keep '{new}'")
        _set_dotted(tree, new, value)
        _drop_empty_stale(tree, cls, old)
    return tree


def with_old_names(cls: type, tree: dict) -> dict:
    """A copy of ``to_dict(cfg)`` with each renamed key moved back to its most recent old name (the
    first listed), so that digests of configs (a sweep's cell keys) made before a rename still match."""
    out = copy.deepcopy(tree)
    back: dict[str, str] = {}
    for old, new in renamed_keys(cls).items():
        back.setdefault(new, old)
    for new, old in back.items():
        found, value = _pop_dotted(out, new)
        if found:
            _set_dotted(out, old, value)
    return out


def _read_yaml(cls: type, path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    data = read_yaml(path, str(path), ConfigError) or {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    apply_renames(cls, data, str(path))
    _check_tree(cls, data, str(path))  # keys and types under the file's own name; the values together later
    return data


def _check_tree(cls: type, data: dict, where: str, prefix: str = "") -> None:
    """The keys and value types of a partial tree for ``cls``, no section built: a section's rules
    that relate its values (``model.heads`` divides ``model.dim``) judge the layered whole, where
    another file or the defaults may set the other value (:func:`load_config` builds it)."""
    fields = config_fields(cls)
    _refuse_unknown(fields, data, where, prefix)
    for k, v in data.items():
        if dataclasses.is_dataclass(fields[k]) and isinstance(v, dict):
            _check_tree(fields[k], v, where, prefix + k + ".")
        else:
            _coerce(v, fields[k], prefix + k, where)


def load_config(
    cls: type[T], path: str | Path | Sequence[str | Path] | None = None, overrides: Sequence[str] = ()
) -> T:
    """Defaults of ``cls``, then the YAML file(s) at ``path`` in order, then ``key=value`` overrides."""
    tree: dict = to_dict(cls())
    paths = [] if path is None else [path] if isinstance(path, (str, Path)) else list(path)
    for p in paths:
        _merge(tree, _read_yaml(cls, p), cls)
    where = "config" if not paths else str(paths[-1])
    files_only = copy.deepcopy(tree) if overrides else None
    _apply_overrides(cls, tree, overrides)
    try:
        return _build(cls, tree, where)
    except ConfigError:
        if files_only is None:
            raise
        try:
            _build(cls, files_only, where)
        except ConfigError:
            raise  # the files' own error
        return _build(cls, tree, "command line")  # the files are fine: the overrides are to blame


def override_config(cfg: T, overrides: Sequence[str], where: str = "config") -> T:
    """A copy of ``cfg`` with ``key=value`` overrides applied, checked as :func:`load_config` checks them
    (e.g. a sweep's per-method settings on a recipe config it has already resolved)."""
    tree = to_dict(cfg)
    _apply_overrides(type(cfg), tree, overrides)
    return _build(type(cfg), tree, where)


def _apply_overrides(cls: type, tree: dict, overrides: Sequence[str]) -> None:
    written: dict[str, str] = {}  # current key -> as the command line gave it (a key given twice: last wins)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override '{item}': expected key=value")
        key, raw = item.split("=", 1)
        given = key.strip()
        key = rename_key(cls, given)
        if written.setdefault(key, given) != given:  # as a YAML file holding both is refused
            first = written[key]
            if key not in (first, given):  # two old names of one key
                raise ConfigError(f"override: both '{first}' and '{given}' are old names of '{key}'; give '{key}'")
            old = given if given != key else first
            raise ConfigError(f"override: both '{old}' and its new name '{key}' are given; keep '{key}'")
        tp = _check_override_key(cls, key)
        value: Any = raw
        if tp is not str and not (get_origin(tp) in (Union, types.UnionType) and str in get_args(tp)):
            if raw.strip().startswith(("[", "{")):
                try:
                    names = get_origin(tp) is list and get_args(tp) == (str,)
                    value = parse_list(raw, strings=names) if raw.strip().startswith("[") else yaml.safe_load(raw)
                except yaml.YAMLError:
                    raise ConfigError(f"override '{item}': value is not valid YAML") from None
        section = _get_dotted(tree, key)
        if dataclasses.is_dataclass(tp) and isinstance(value, dict) and isinstance(section, dict):
            _merge(section, value, tp)  # split={seed: 3} sets split.seed, as a YAML file's section does
        else:
            _set_dotted(tree, key, value)


def config_from_dict(cls: type[T], tree: dict, where: str = "") -> T:
    """``cls`` from a plain dict such as a saved ``config.yaml`` or a checkpoint's config: defaults,
    then ``tree`` with renamed keys moved (silently when ``where`` is empty: a run's own saved
    config, written before a rename), checked like a YAML file."""
    data = copy.deepcopy(tree)
    apply_renames(cls, data, where)
    base = to_dict(cls())
    _merge(base, data, cls)
    return _build(cls, base, where or cls.__name__)


def _merge(base: dict, new: dict, cls: type) -> None:
    """``new`` over ``base``, section by section; a mapping-valued key (``data.source_weights``, a
    recipe's ``kwargs``) is a value: a later layer's replaces the earlier one whole."""
    fields = config_fields(cls)
    for k, v in new.items():
        tp = fields.get(k)
        if dataclasses.is_dataclass(tp) and isinstance(v, dict) and isinstance(base.get(k), dict):
            _merge(base[k], v, tp)
        else:
            base[k] = v


def save_config(cfg: Any, path: str | Path) -> None:
    """Write the resolved config as YAML (atomically)."""
    write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))
