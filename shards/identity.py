"""A build's identity: what makes two shard builds the same build, and how two identities differ.

The identity (the settings that change the output, every source's name, spec, item count, content
fingerprint and options, the exclusion sets) is stored in the journal, the parts' spool and
``manifest.json``; a resumed
build, a build part joining others and a re-run are refused when it differs, with the first difference
in the message (:func:`describe_difference`).
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
    return "the input files differ"
