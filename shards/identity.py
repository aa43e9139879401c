"""A build's identity: what makes two shard builds the same build, and how two identities differ.

The identity (the settings that change the output, every source's name, spec, item count, content
fingerprint and options, the exclusion sets) is stored in the journal, the parts' spool and
``manifest.json``; a resumed build, a build part joining others and a re-run are refused when it
differs (:func:`same_build`), with the first difference in the message (:func:`describe_difference`).
A folder source's spec is recorded but not compared: ``DIR``, ``DIR/``, ``./DIR`` from another working
folder or a copy of the same files elsewhere read the same inputs (its fingerprint compares them).
"""

from __future__ import annotations

from collections.abc import Sequence

from shards.exclusions import ExclusionSet
from shards.sources import Source


def build_identity(sources: Sequence[Source], settings: dict, exclusions: Sequence[ExclusionSet] = ()) -> dict:
    """``settings``: :meth:`shards.build.BuildSettings.identity`; exclusion sets only when there are some
    (older builds stay resumable)."""
    identity = {
        "settings": settings,
        "sources": [
            {
                "name": s.name,
                "spec": s.spec,
                "items": len(s),
                "fingerprint": s.fingerprint(),
                "options": s.options.identity(),
            }
            for s in sources
        ],
    }
    if exclusions:
        identity["exclusions"] = [x.identity() for x in exclusions]
    return identity


def _compared(identity: dict) -> dict:
    """``identity`` without the specs of folder sources (a Hub dataset's spec names its content)."""
    sources = [
        {k: v for k, v in s.items() if k != "spec" or str(v).startswith("hf:")} for s in identity.get("sources", [])
    ]
    return {**identity, "sources": sources}


def same_build(old: dict | None, new: dict) -> bool:
    """Whether ``old`` (recorded) and ``new`` are the identity of one build."""
    return isinstance(old, dict) and _compared(old) == _compared(new)


def source_stamps(sources: Sequence[Source]) -> dict[str, str]:
    """Per source, its files' modification times (:meth:`Source.stamp`): kept beside the identity by
    the journal and the parts' spool, so a file edited while a build is unfinished is found."""
    return {s.name: s.stamp() for s in sources}


def modified_sources(recorded: dict[str, str] | None, now: dict[str, str]) -> list[str]:
    """The sources whose stamps differ from those recorded (none when nothing was recorded)."""
    return [] if recorded is None else [n for n in now if recorded.get(n) != now[n]]


def describe_difference(old: dict, new: dict) -> str:
    """The first way ``new`` differs from ``old``: settings (each changed key), source names, options, files."""
    fmt, now = old.get("settings", {}).get("format"), new["settings"].get("format")
    if fmt != now:
        return (
            f"made by an older shards.build (build format {fmt}; this one writes format {now}, "
            "whose cleaning differs: the samples could not be mixed)"
        )
    if old.get("settings") != new.get("settings"):
        # a PNG build's identity leaves out its encoding (as before encodings existed), and a key
        # only one side has reads as that side's default
        both = {**{"encoding": "png"}, **old.get("settings", {})}, {**{"encoding": "png"}, **new["settings"]}
        keys = [k for k in {**both[0], **both[1]} if both[0].get(k) != both[1].get(k)]
        return "settings differ (" + ", ".join(f"{k}: {both[0].get(k)} -> {both[1].get(k)}" for k in keys) + ")"
    oldn = [s["name"] for s in old.get("sources", [])]
    newn = [s["name"] for s in new["sources"]]
    if oldn != newn:
        return f"sources differ ({', '.join(oldn)} -> {', '.join(newn)})"
    for o, n in zip(old.get("sources", []), new["sources"]):
        if o.get("options") != n.get("options"):
            return f"options of source '{n['name']}' differ"
    if old.get("exclusions") != new.get("exclusions"):
        names = [[x["name"] for x in d.get("exclusions", [])] for d in (old, new)]
        return f"exclusion sets differ ({', '.join(names[0]) or 'none'} -> {', '.join(names[1]) or 'none'})"
    for o, n in zip(_compared(old)["sources"], _compared(new)["sources"]):
        if o.get("spec") != n.get("spec"):
            return f"source '{n['name']}' is another dataset ({o.get('spec')} -> {n.get('spec')})"
        if o.get("items") != n.get("items"):
            return f"source '{n['name']}' has {n.get('items')} input files, the recorded build {o.get('items')}"
        if o.get("fingerprint") != n.get("fingerprint"):
            return f"the files of source '{n['name']}' differ in names or sizes"
    return "the input files differ"
