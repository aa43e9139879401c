"""The command line of a config: ``--config`` files, ``key=value`` overrides, and what a command prints
about its settings: ``--help`` lists every key with its default
and meaning, ``--show-config`` prints the resolved config as commented YAML a user can save and pass
back with ``--config``.

The meanings are the trailing ``# comments`` of the config dataclasses' fields (and a section's
docstring), read from their source once: the dataclasses stay the single place a setting is
described. Written here because argparse knows nothing of nested dataclasses and no small library
turns source comments into help.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import functools
import inspect
import io
import sys
import textwrap
import tokenize
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml

from sonodistill.config import config_fields, load_config, renamed_keys, to_dict
from sonodistill.errors import UserError

T = TypeVar("T")


@functools.cache
def _own_notes(cls: type) -> dict[str, str]:
    """``field -> comment`` for the fields ``cls`` itself declares (not inherited ones)."""
    try:
        source = textwrap.dedent(inspect.getsource(cls))
    except (OSError, TypeError):
        return {}
    comments: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments.setdefault(tok.start[0], tok.string.lstrip("#").strip())
    notes = {}
    body = ast.parse(source).body[0]
    for node in getattr(body, "body", []):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                if line in comments:
                    notes[node.target.id] = comments[line]
                    break
    return notes


def field_notes(cls: type) -> dict[str, str]:
    """``field -> one-line meaning`` of every field of ``cls``, inherited ones included."""
    notes: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if dataclasses.is_dataclass(klass):
            notes.update(_own_notes(klass))
    return notes


def section_note(cls: type) -> str:
    """The first sentence of a section's docstring ('' when it has none of its own)."""
    doc = cls.__dict__.get("__doc__") or ""
    if not doc or doc.startswith(cls.__name__ + "("):  # dataclass's generated signature
        return ""
    return " ".join(doc.strip().split("\n\n")[0].split()).replace("``", "")


def _flow(name: str, value: Any) -> str:
    """``name: value`` on one line of YAML (flow style for lists and mappings)."""
    text = yaml.safe_dump({name: value}, default_flow_style=True, width=10**9, sort_keys=False).strip()
    return text[1:-1]


def keys_help(cls: type, prefix: str = "", values: dict | None = None) -> list[str]:
    """``key = default    meaning`` for every leaf key, section by section (``values``: a resolved
    config's ``to_dict`` to show instead of the dataclass defaults)."""
    return _keys_lines(cls, values if values is not None else to_dict(cls()), prefix)


def _keys_lines(cls: type, values: dict, prefix: str) -> list[str]:
    notes = field_notes(cls)
    lines: list[str] = []
    sections: list[tuple[str, type]] = []
    for name, tp in config_fields(cls).items():
        if dataclasses.is_dataclass(tp):
            sections.append((name, tp))
            continue
        entry = f"  {prefix}{_flow(name, values[name]).replace(': ', ' = ', 1)}"
        note = notes.get(name, "")
        lines.append(f"{entry:<48} {note}".rstrip() if note else entry)
    for name, tp in sections:
        head = section_note(tp)
        lines.append(f"{prefix}{name}.*" + (f"  ({head})" if head else ""))
        lines.extend(_keys_lines(tp, values[name], prefix + name + "."))
    return lines


def help_epilog(cls: type, renamed: dict[str, str] | None = None, values: dict | None = None, source: str = "") -> str:
    """The ``--help`` epilog: every config key, its default (``values``: after ``source``, e.g. a
    preset) and its meaning."""
    shown = f"value after {source}" if source else "default"
    text = f"config keys (key=value; {shown} shown after =):\n" + "\n".join(keys_help(cls, values=values))
    if renamed:
        text += "\n\nrenamed keys (the old name still works, with a warning):\n" + "\n".join(
            f"  {old} -> {new}" for old, new in renamed.items()
        )
    return text


def commented_yaml(cfg: Any) -> str:
    """The resolved config as YAML with each key's meaning as a trailing comment (loads back as is)."""
    return "\n".join(_yaml_lines(type(cfg), to_dict(cfg), 0)) + "\n"


def _yaml_lines(cls: type, values: dict, indent: int) -> list[str]:
    notes = field_notes(cls)
    pad = " " * indent
    lines = []
    for name, tp in config_fields(cls).items():
        if dataclasses.is_dataclass(tp):
            head = section_note(tp)
            lines.append(f"{pad}{name}:" + (f"  # {head}" if head else ""))
            lines.extend(_yaml_lines(tp, values[name], indent + 2))
            continue
        entry = pad + _flow(name, values[name])
        note = notes.get(name, "")
        lines.append(f"{entry}  # {note}" if note else entry)
    return lines


def add_config_args(
    parser: argparse.ArgumentParser,
    cls: type | None = None,
    default_config: str | None = None,
    base: Sequence[str | Path] = (),
) -> None:
    """``--config FILE`` (repeatable: later files win), ``--show-config`` and trailing ``key=value``
    overrides; with ``cls``, ``--help`` lists every key of that config with its default and meaning
    (the value after the ``base`` files, e.g. a recipe's preset, where given)."""
    parser.add_argument(
        "--config", action="append", default=None, help="YAML config file; repeat to layer several (later files win)"
    )
    parser.add_argument(
        "--show-config",
        action="store_true",
        help="print the resolved config (after --config files and overrides) as YAML, then exit",
    )
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides (keys listed below)")
    parser.set_defaults(default_config=default_config)
    if cls is not None:
        parser.formatter_class = argparse.RawDescriptionHelpFormatter
        values = to_dict(load_config(cls, list(base))) if base else None
        epilog = help_epilog(cls, renamed_keys(cls), values, ", ".join(Path(b).name for b in base))
        parser.epilog = "\n\n".join(x for x in (parser.epilog, epilog) if x)


def parse_command_line(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """``parser.parse_args`` that also takes ``key=value`` overrides after a flag (``--splits-only
    run.num_workers=1``): argparse fills a ``nargs="*"`` positional from its first run of values only."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args, extra = parser.parse_known_args(argv)
    late = [a for a in extra if "=" in a and not a.startswith("-")]
    rest = [a for a in extra if a not in late]
    if rest or (late and not hasattr(args, "overrides")):
        parser.error(f"unrecognized arguments: {' '.join(rest or late)}")
    if not late:
        return parser.parse_args(argv)
    # parse again without the late ones (each the last token of its value: they follow the first
    # run of overrides), then add them after that run, in their order
    drop, j = set(), len(late) - 1
    for i in range(len(argv) - 1, -1, -1):
        if j >= 0 and argv[i] == late[j]:
            drop.add(i)
            j -= 1
    args = parser.parse_args([a for i, a in enumerate(argv) if i not in drop])
    args.overrides = [*args.overrides, *late]
    return args


def config_from_args(
    cls: type[T], args: argparse.Namespace, base: Sequence[str | Path] = (), check: Callable[[T], None] | None = None
) -> T:
    """``base`` files (e.g. a recipe's preset), then every ``--config`` file, then the overrides;
    with ``--show-config`` the resolved config is printed as commented YAML and the command exits 0,
    after ``check`` (values out of range: a printed config is one that runs)."""
    files = list(base) + (args.config or ([args.default_config] if getattr(args, "default_config", None) else []))
    cfg = load_config(cls, files, args.overrides)
    if getattr(args, "show_config", False):
        if check is not None:
            check(cfg)
        show_config(cfg)
    return cfg


def config_from_flags(
    cls: type[T], args: argparse.Namespace, flags: Sequence[str], check: Callable[[T], None] | None = None
) -> T:
    """:func:`config_from_args` with the command's own flags (``--task X``) as the last overrides
    (``task=X``), so a flag wins over a config file; flags not given are left alone."""
    given = [f"{k}={v}" for k in flags if (v := getattr(args, k)) is not None]
    for g in given:  # `out=A --out B`: which one was meant is a guess
        key = g.split("=", 1)[0]
        twice = [o for o in args.overrides if o.split("=", 1)[0] == key]
        if twice:
            raise UserError(f"{key}: given twice ({twice[-1]} and --{key} {g.split('=', 1)[1]}); give one")
    args.overrides = [*args.overrides, *given]
    return config_from_args(cls, args, check=check)


def show_config(cfg: Any) -> None:
    """Print ``cfg`` as commented YAML (rank 0 only) and exit 0: ``--show-config``."""
    from sonodistill.logs import is_main_rank

    if is_main_rank():
        print(commented_yaml(cfg), end="")
    raise SystemExit(0)
