"""Reading a user's YAML file (configs, catalogues): UTF-8 only and no key given twice.

PyYAML's ``safe_load`` keeps the last of two equal keys without a word (two ``path:`` lines in a
catalogue entry, a second ``sources:`` list), so a typo silently changes what is built; this
loader refuses them, and a file that is not UTF-8 is one line instead of a ``UnicodeDecodeError``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from sonodistill.errors import UserError


class _StrictLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` that refuses a mapping key given twice."""


def _mapping(loader: _StrictLoader, node: yaml.MappingNode) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        if key_node.tag == "tag:yaml.org,2002:merge":  # ``<<: *defaults``: merged below, its keys overridable
            continue
        key = loader.construct_object(key_node, deep=True)
        if key in seen:
            line = key_node.start_mark.line + 1
            raise yaml.constructor.ConstructorError(
                None, None, f"key '{key}' given twice (lines {seen[key]} and {line})", key_node.start_mark
            )
        seen[key] = key_node.start_mark.line + 1
    loader.flatten_mapping(node)
    return dict(loader.construct_pairs(node, deep=True))


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load`` that refuses duplicate keys (raises ``yaml.YAMLError``)."""
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader subclass


def read_yaml(path: str | Path, what: str, error: type[UserError] = UserError) -> Any:
    """The YAML document in ``path``; anything wrong with it is one ``error`` line starting with
    ``what`` (the flag or file that named it)."""
    try:
        text = Path(path).read_bytes().decode("utf-8")
    except UnicodeDecodeError as exc:
        raise error(f"{what}: not UTF-8 text (byte 0x{exc.object[exc.start]:02x} at offset {exc.start})") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        raise error(f"{what}: not valid YAML ({' '.join(str(exc).split())})") from None
