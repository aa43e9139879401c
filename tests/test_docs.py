"""Every command in the README and ``docs/`` (the stages' and ``bench/``'s) works as written: its flags
exist, and its ``key=value`` overrides resolve against the command's config (``--show-config``)
without a deprecation warning; every Python snippet imports what exists and calls it with arguments
its signature accepts; every catalogue shown loads; every ``section.key=value`` named exists.

The commands run in-process up to the point where they would touch data: a ``key=value`` command
stops at ``--show-config`` (which resolves every ``--config`` file and override, then exits 0); a
flags-only command stops right after argparse accepted its arguments. The SLURM lines are submitted
for real by ``tests/test_slurm_*.py``; lines with placeholders (``...``, ``ARGS``, shell expansions)
cannot be run as written and are left out.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import importlib.util
import inspect
import logging
import re
import shlex
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
ENTRY = re.compile(r"python -m (shards|pretrain|downstream)\.[\w.]+|pretrain/run\.py|bench/\w+\.py")
PLACEHOLDER = re.compile(r"\.\.\.|\bARGS\b|\$\(|\$\{|&&|^\s*(sbatch|jid=)")


def code_blocks(languages: tuple[str, ...]) -> Iterator[tuple[str, str]]:
    """``(where, text)`` of every fenced block in one of ``languages`` in the README and docs/."""
    for doc in DOCS:
        inside, lang, block, start = False, "", [], 0
        for number, line in enumerate(doc.read_text().splitlines(), 1):
            if line.startswith("```"):
                if inside and lang in languages:
                    yield f"{doc.relative_to(ROOT)}:{start}", "\n".join(block)
                inside, lang, block, start = not inside, line[3:].strip(), [], number
            elif inside:
                block.append(line)


def documented_commands() -> Iterator[tuple[str, str]]:
    """``(where, command line)`` for every runnable command in a shell block of the docs."""
    for where, block in code_blocks(("", "bash", "sh", "console")):
        for command in re.sub(r"\\\n\s*", " ", block).splitlines():
            if ENTRY.search(command) and not PLACEHOLDER.search(command):
                yield where, command.strip()


def split_command(command: str) -> tuple[str, list[str]]:
    """``(module, argv)`` of a documented command line (launcher prefixes and comments dropped)."""
    tokens = shlex.split(re.sub(r"\[(--[^\]]+)\]", r"\1", command), comments=True)  # `[--seeds 2]`: optional
    if "-m" in tokens:
        at = tokens.index("-m")
        return tokens[at + 1], tokens[at + 2 :]
    at = next(i for i, t in enumerate(tokens) if t.endswith(".py"))
    return ("pretrain.run" if tokens[at].endswith("pretrain/run.py") else tokens[at]), tokens[at + 1 :]


COMMANDS = list(documented_commands())


def test_the_docs_hold_the_commands_of_every_stage():
    """The extraction finds what a reader sees: each stage's command, in the README and in docs/."""
    modules = {split_command(c)[0] for _, c in COMMANDS}
    assert {"shards.build", "pretrain.run", "pretrain.export", "downstream.run", "downstream.sweep"} <= modules
    assert "downstream.kd" in modules and "downstream.audit" in modules
    assert sum(where.startswith("README.md") for where, _ in COMMANDS) >= 8
    assert len(COMMANDS) >= 35


class _Parsed(Exception):
    """Raised once argparse accepted a command's arguments, carrying what it parsed."""

    def __init__(self, namespace: argparse.Namespace) -> None:
        self.namespace = namespace


@pytest.mark.parametrize(("where", "command"), COMMANDS, ids=[f"{w}:{split_command(c)[0]}" for w, c in COMMANDS])
def test_a_documented_command_works_as_written(where, command, monkeypatch, caplog, capsys):
    """argparse accepts the command; one that takes ``key=value`` settings (its parser has
    ``--show-config``) then resolves them all, as its run would before touching data."""
    module, argv = split_command(command)
    monkeypatch.chdir(ROOT)  # documented config paths are relative to the repository
    if module.startswith("bench/"):  # a script reading sys.argv
        assert (ROOT / module).is_file(), f"{where}: `{module}` does not exist"
        spec = importlib.util.spec_from_file_location(f"bench_{Path(module).stem}", ROOT / module)
        script = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, spec.name, script)  # dataclasses look their module up there
        monkeypatch.syspath_prepend(str(ROOT / "bench"))  # as `python bench/x.py` has it

        spec.loader.exec_module(script)

        def main(args: list[str]) -> object:
            monkeypatch.setattr(sys, "argv", [module, *args])
            return script.main()
    else:
        package = importlib.import_module(module)
        main = importlib.import_module(f"{module}.__main__").main if hasattr(package, "__path__") else package.main
    parse = argparse.ArgumentParser.parse_args

    def parse_then_stop(self, args=None, namespace=None):
        raise _Parsed(parse(self, args, namespace))

    caplog.set_level(logging.WARNING)
    with monkeypatch.context() as stopped, pytest.raises((SystemExit, _Parsed)) as stop:
        stopped.setattr(argparse.ArgumentParser, "parse_args", parse_then_stop)
        main(argv)
    if stop.type is _Parsed and hasattr(stop.value.namespace, "show_config"):
        with pytest.raises(SystemExit) as stop:
            main([*argv, "--show-config"])
    err = capsys.readouterr().err
    if stop.type is SystemExit:
        assert stop.value.code in (0, None), f"{where}: `{command}` failed: {err.strip()[-300:]}"
    assert "deprecated" not in caplog.text + err, f"{where}: `{command}` uses a renamed key: {caplog.text}{err}"


SNIPPETS = list(code_blocks(("python",)))


def test_the_docs_hold_python_snippets():
    assert len(SNIPPETS) >= 3 and any(where.startswith("README.md") for where, _ in SNIPPETS)


@pytest.mark.parametrize(("where", "source"), SNIPPETS, ids=[w for w, _ in SNIPPETS])
def test_a_documented_snippet_matches_the_api(where, source):
    """Names imported from the project exist; a call to one binds to its signature (argument names
    and count), which is what goes stale when an API is renamed."""
    tree = ast.parse(source, where)
    names: dict[str, object] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                importlib.import_module(alias.name)
        elif isinstance(node, ast.ImportFrom):
            module = importlib.import_module(node.module or "")
            for alias in node.names:
                assert hasattr(module, alias.name), f"{where}: `{node.module}` has no `{alias.name}`"
                names[alias.asname or alias.name] = getattr(module, alias.name)
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)]
    checked = 0
    for call in calls:
        target = names.get(call.func.id)
        if (
            target is None
            or any(isinstance(a, ast.Starred) for a in call.args)
            or None in [k.arg for k in call.keywords]
        ):
            continue
        try:
            inspect.signature(target).bind(*call.args, **{k.arg: k.value for k in call.keywords})
        except TypeError as e:
            pytest.fail(
                f"{where}: `{ast.unparse(call)}` does not match `{call.func.id}{inspect.signature(target)}`: {e}"
            )
        checked += 1
    assert checked or not names, f"{where}: imports project names but calls none of them"


CATALOGUES = [(w, text) for w, text in code_blocks(("yaml", "yml")) if re.search(r"^sources:", text, re.M)]


@pytest.mark.parametrize(("where", "text"), CATALOGUES, ids=[w for w, _ in CATALOGUES])
def test_a_documented_catalogue_loads(where, text, tmp_path):
    """A catalogue shown in the docs passes the catalogue's own checks (keys, values, frame sampling)."""
    from shards.catalogue import load_corpus

    (tmp_path / "corpus.yaml").write_text(text)
    corpus = load_corpus(tmp_path / "corpus.yaml")
    assert corpus.sources, where


def test_the_docs_show_a_catalogue():
    assert CATALOGUES


def config_keys() -> tuple[set[str], dict[str, str]]:
    """Every dotted key any command accepts, and every deprecated key -> its new name."""
    from downstream.audit import AuditConfig
    from downstream.config import RunConfig
    from downstream.kd.registry import PAPERS
    from downstream.sweep import SweepConfig
    from pretrain.config import PretrainConfig
    from sonodistill.config import renamed_keys, valid_keys

    keys: set[str] = set()
    renamed: dict[str, str] = {}
    for cls in (PretrainConfig, RunConfig, SweepConfig, AuditConfig, *(p.config for p in PAPERS.values())):
        keys.update(valid_keys(cls))
        renamed.update(renamed_keys(cls))
    return keys, renamed


def test_every_dotted_key_the_docs_name_exists():
    """A `section.key=value` named in prose is a key some command accepts; an old name appears only in
    a paragraph that says it was renamed."""
    keys, renamed = config_keys()
    named, stale = 0, []
    for doc in DOCS:
        for paragraph in doc.read_text().split("\n\n"):
            history = re.search(r"renam|deprecat", paragraph, re.I)
            for key in re.findall(r"`([a-z_]+(?:\.[a-z_0-9]+)+)=[^`\n]*`", paragraph):
                named += 1
                if key not in keys and not history:
                    stale.append(
                        f"{doc.relative_to(ROOT)}: `{key}`" + (f" (now `{renamed[key]}`)" if key in renamed else "")
                    )
    assert named >= 20
    assert not stale, "keys no command accepts: " + ", ".join(stale)


REPO_DIRS = ("shards/", "pretrain/", "downstream/", "launch/", "tests/", "bench/", "docs/", "sonodistill/", ".ci/")


def test_every_repository_path_the_docs_name_exists():
    """A backticked path into this repository (``launch/accelerate/multi_gpu.yaml``) names a file or
    folder that exists; rows naming paths inside other repositories (provenance) are not ours."""
    named, missing = 0, []
    for doc in DOCS:
        for line in doc.read_text().splitlines():
            if "github.com" in line:
                continue
            for token in re.findall(r"`([^`\s]+)`", line):
                path = token.split("::")[0].split(":")[0]
                if path.startswith(REPO_DIRS) and not re.search(r"[<>*{}$]|\.\.\.", path):
                    named += 1
                    if not (ROOT / path).exists():
                        missing.append(f"{doc.relative_to(ROOT)}: `{token}`")
    assert named >= 50
    assert not missing, "no such path: " + ", ".join(missing)


def heading_anchors(doc: Path) -> set[str]:
    """The anchors GitHub gives a Markdown file's headings (lower case, punctuation dropped, spaces to
    hyphens, ``-1``, ``-2`` for repeats); headings inside code blocks are not headings."""
    anchors, seen, inside = set(), {}, False
    for line in doc.read_text().splitlines():
        if line.startswith("```"):
            inside = not inside
        elif not inside and (m := re.match(r"#+\s+(.*)", line)):
            slug = re.sub(r"[^\w\- ]", "", m.group(1).strip().lower()).replace(" ", "-")
            anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
            seen[slug] = seen.get(slug, 0) + 1
    return anchors


def test_every_link_between_the_docs_lands():
    """A relative link names a file that exists and, with ``#anchor``, a heading in it."""
    links, broken = 0, []
    for doc in DOCS:
        for target in re.findall(r"\]\(([^)\s]+)\)", doc.read_text()):
            if re.match(r"[a-z]+://|mailto:", target):
                continue
            links += 1
            file, _, anchor = target.partition("#")
            path = (doc.parent / file) if file else doc
            if not path.exists() or (anchor and path.suffix == ".md" and anchor not in heading_anchors(path)):
                broken.append(f"{doc.relative_to(ROOT)}: ({target})")
    assert links >= 100
    assert not broken, "broken links: " + ", ".join(broken)
