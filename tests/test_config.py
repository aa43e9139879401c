"""Typed configs (sonodistill.config), one-line user errors (sonodistill.errors), atomic writes
(sonodistill.atomic)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Literal

import pytest
import yaml

from sonodistill.atomic import atomic_open, write_json
from sonodistill.config import ConfigError, load_config, save_config, to_dict, valid_keys
from sonodistill.errors import UserError, cli_main


@dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.999)
    schedule: Literal["cosine", "constant"] = "cosine"


@dataclass
class Cfg:
    out_dir: str = "runs/x"
    steps: int = 100
    layers: list[int] = field(default_factory=lambda: [-2, -1])
    resume: str | None = None
    compile: bool = False
    optim: Optim = field(default_factory=Optim)


def test_defaults_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("steps: 7\noptim:\n  lr: 0.5\n")
    cfg = load_config(Cfg, f, ["optim.lr=3e-4", "layers=[-4,-1]", "compile=true", "resume=none", "out_dir=007"])
    assert cfg.steps == 7  # from the file
    assert cfg.optim.lr == pytest.approx(3e-4)  # override beats the file
    assert cfg.optim.betas == (0.9, 0.999)  # default kept
    assert cfg.layers == [-4, -1] and cfg.compile is True and cfg.resume is None
    assert cfg.out_dir == "007"  # strings are never re-typed


def test_layered_files_later_wins_and_each_is_checked(tmp_path):
    preset, user = tmp_path / "preset.yaml", tmp_path / "user.yaml"
    preset.write_text("steps: 7\noptim:\n  lr: 0.5\n  schedule: constant\n")
    user.write_text("optim:\n  lr: 0.25\n")
    cfg = load_config(Cfg, [preset, user], ["steps=9"])
    assert (cfg.steps, cfg.optim.lr, cfg.optim.schedule) == (9, 0.25, "constant")  # nested keys merge
    user.write_text("optim:\n  lrate: 0.25\n")
    with pytest.raises(ConfigError, match=f"{user}: unknown key 'optim.lrate'"):
        load_config(Cfg, [preset, user])


def test_scientific_and_integral_numbers():
    cfg = load_config(Cfg, None, ["steps=1e3", "optim.lr=1e-4", "optim.betas=0.8,0.9"])
    assert cfg.steps == 1000 and isinstance(cfg.steps, int)
    assert cfg.optim.betas == (0.8, 0.9)


def test_unknown_key_lists_valid_keys(tmp_path):
    with pytest.raises(ConfigError) as e:
        load_config(Cfg, None, ["optim.lrr=1"])
    msg = str(e.value)
    assert "optim.lrr" in msg and "optim.lr" in msg and "out_dir" in msg and "\n" not in msg
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  momentum: 0.9\n")
    with pytest.raises(ConfigError, match=r"c.yaml: unknown key 'optim.momentum'; valid keys: optim.lr, optim.betas"):
        load_config(Cfg, f)
    assert valid_keys(Cfg) == [
        "out_dir",
        "steps",
        "layers",
        "resume",
        "compile",
        "optim.lr",
        "optim.betas",
        "optim.schedule",
    ]


@pytest.mark.parametrize(
    "override, expected",
    [
        ("steps=abc", "key 'steps' expects int"),
        ("optim.schedule=linear", "expects one of 'cosine', 'constant'"),
        ("compile=maybe", "key 'compile' expects bool"),
        ("steps", "expected key=value"),
    ],
)
def test_bad_values_name_the_key(override, expected):
    with pytest.raises(ConfigError, match=expected):
        load_config(Cfg, None, [override])


def test_list_items_with_brackets_split_at_top_level_commas():
    @dataclass
    class Sweep:
        methods: list[str] = field(default_factory=list)

    cfg = load_config(Sweep, None, ["methods=[kd:vit_mobilenet,kd:hdkd?model.channels=[64,128,192]&seed=1]"])
    assert cfg.methods == ["kd:vit_mobilenet", "kd:hdkd?model.channels=[64,128,192]&seed=1"]
    assert load_config(Sweep, None, ["methods=[a, b]"]).methods == ["a", "b"]  # plain YAML still YAML
    assert load_config(Sweep, None, ["methods=a,b"]).methods == ["a", "b"]


def test_bad_yaml_file(tmp_path):
    f = tmp_path / "bad.yaml"
    f.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="bad.yaml: not valid YAML"):
        load_config(Cfg, f)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(Cfg, tmp_path / "missing.yaml")


def test_save_round_trip(tmp_path):
    cfg = load_config(Cfg, None, ["steps=5", "optim.lr=0.25"])
    save_config(cfg, tmp_path / "resolved.yaml")
    data = yaml.safe_load((tmp_path / "resolved.yaml").read_text())
    assert data == to_dict(cfg)
    assert load_config(Cfg, tmp_path / "resolved.yaml") == cfg


def test_cli_main_one_line_exit_2(capsys):
    @cli_main
    def run():
        raise UserError("data/x.png: expected\n a PNG")

    with pytest.raises(SystemExit) as e:
        run()
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err == "error: data/x.png: expected a PNG\n"


def test_a_full_disk_or_a_forbidden_folder_is_one_line_and_other_os_errors_stay_tracebacks(capsys):
    import errno

    @cli_main
    def full():
        raise OSError(errno.ENOSPC, "No space left on device", "/data/shards/shard-000003.tar.tmp")

    with pytest.raises(SystemExit) as e:
        full()
    assert e.value.code == 74
    assert capsys.readouterr().err == (
        "error: /data/shards/shard-000003.tar.tmp: No space left on device; run the command again once fixed\n"
    )

    @cli_main
    def file_in_the_way():  # --out under a file: a path to fix, not a bug
        raise NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/notes/x")

    with pytest.raises(SystemExit) as e:
        file_in_the_way()
    assert e.value.code == 74
    assert capsys.readouterr().err == "error: /data/notes/x: Not a directory; run the command again once fixed\n"

    @cli_main
    def bug():
        raise OSError(errno.EBADF, "Bad file descriptor")

    with pytest.raises(OSError):
        bug()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "m.json"
    write_json(target, {"a": 1})
    with pytest.raises(RuntimeError):
        with atomic_open(target, "w") as fh:
            fh.write('{"a": 2')  # torn write
            raise RuntimeError("killed")
    assert target.read_text() == '{\n  "a": 1\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temp file left behind
    mask = os.umask(0)
    os.umask(mask)
    assert (target.stat().st_mode & 0o777) == (0o666 & ~mask)


def test_what_a_killed_atomic_write_left_is_removed_once_stale(tmp_path):
    import os
    import subprocess
    import sys
    import time
    from pathlib import Path

    from sonodistill.atomic import remove_stale_temporaries

    cache = tmp_path / "cache"
    script = "from sonodistill.atomic import atomic_open\nimport os, sys\n"
    script += f"with atomic_open({str(cache / 'sub' / 'feat.pt')!r}, 'wb') as fh:\n    fh.write(b'x'); os._exit(9)\n"
    repo = str(Path(__file__).resolve().parents[1])
    assert subprocess.run([sys.executable, "-c", script], env={**os.environ, "PYTHONPATH": repo}).returncode == 9
    left = list(cache.rglob(".feat.pt.*.tmp"))
    assert len(left) == 1  # a process killed mid-write leaves its temporary
    (cache / "sub" / ".kept.tmp").write_text("mine")  # another name of ours, fresh: a write in progress
    (cache / "notes.tmp").write_text("not a temporary of ours")
    old = time.time() - 7200
    os.utime(left[0], (old, old))
    os.utime(cache / "notes.tmp", (old, old))
    assert remove_stale_temporaries(cache) == 1
    assert not left[0].exists() and (cache / "sub" / ".kept.tmp").exists() and (cache / "notes.tmp").exists()
    assert remove_stale_temporaries(tmp_path / "none") == 0


def test_overrides_on_a_resolved_config_are_checked_and_copy_it():
    from sonodistill.config import override_config

    base = load_config(Cfg, None, ["steps=7"])
    cfg = override_config(base, ["optim.lr=0.5", "layers=[1, 2]"])
    assert (cfg.steps, cfg.optim.lr, cfg.layers, cfg.optim.betas) == (7, 0.5, [1, 2], (0.9, 0.999))
    assert base.optim.lr == 1e-4 and base.layers == [-2, -1]  # the resolved config is left as it was
    with pytest.raises(ConfigError, match="unknown key 'optim.beta'"):
        override_config(base, ["optim.beta=1"])
    with pytest.raises(ConfigError, match="key 'steps' expects int"):
        override_config(base, ["steps=many"])


def test_a_bad_value_is_blamed_on_where_it_was_given(tmp_path):
    """A wrong override is the command line's, not the config file's (which held a good value)."""
    f = tmp_path / "c.yaml"
    f.write_text("steps: 3\n")
    with pytest.raises(ConfigError, match=r"^command line: key 'steps' expects int, got 'abc'"):
        load_config(Cfg, f, ["steps=abc"])
    f.write_text("steps: abc\n")
    with pytest.raises(ConfigError, match=rf"^{f}: key 'steps' expects int"):
        load_config(Cfg, f, ["compile=true"])


@dataclass
class Head:
    dim: int = 256
    heads: int = 8

    def __post_init__(self) -> None:
        if self.dim % self.heads:
            raise ConfigError(f"heads: {self.heads} does not divide dim {self.dim}")


@dataclass
class Layered:
    head: Head = field(default_factory=Head)
    weights: dict[str, float] = field(default_factory=dict)
    classes: list[str] = field(default_factory=list)
    optim: Optim = field(default_factory=Optim)
    RENAMED = {"old_classes": "classes", "older_classes": "classes"}


def test_a_rule_relating_two_values_judges_the_layered_files_together(tmp_path):
    """A file that sets one of two related values is judged with the values the other layers give,
    not alone against the defaults (a preset, then a tiny config, then a user's file)."""
    tiny, user = tmp_path / "tiny.yaml", tmp_path / "user.yaml"
    tiny.write_text("head:\n  heads: 2\n")
    user.write_text("head:\n  dim: 34\n")  # 8 does not divide 34, 2 does
    assert load_config(Layered, [tiny, user]).head == Head(34, 2)
    with pytest.raises(ConfigError, match="heads: 8 does not divide dim 34"):
        load_config(Layered, [user])


def test_a_mapping_value_is_replaced_whole_and_a_section_given_whole_is_merged(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("weights: {busi: 2, ddti: 1}\noptim: {lr: 0.5, schedule: constant}\n")
    b.write_text("weights: {thyroid: 1}\n")
    cfg = load_config(Layered, [a, b], ["optim={lr: 0.25}"])
    assert cfg.weights == {"thyroid": 1.0}  # the later file's map, not the union of both
    assert (cfg.optim.lr, cfg.optim.schedule) == (0.25, "constant")  # the section's other keys kept


def test_yaml_merge_keys_and_names_typed_as_written(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("optim:\n  <<: {lr: 0.5, schedule: constant}\n  lr: 0.25\n")
    cfg = load_config(Layered, f, ["classes=[007, no, 1.10]"])
    assert (cfg.optim.lr, cfg.optim.schedule) == (0.25, "constant")
    assert cfg.classes == ["007", "no", "1.10"]  # names, not numbers or booleans
    f.write_text("optim:\n  lr: 0.5\n  lr: 0.25\n")
    with pytest.raises(ConfigError, match="key 'lr' given twice"):
        load_config(Layered, f)


def test_two_old_names_of_one_key_are_named_as_such():
    with pytest.raises(ConfigError, match="both 'old_classes' and 'older_classes' are old names of 'classes'"):
        load_config(Layered, None, ["old_classes=[a,b]", "older_classes=[c,d]"])


def test_an_unquoted_yaml_no_is_the_choice_no(tmp_path):
    """YAML reads ``mixed_precision: no`` as false: a literal offering 'no' takes it as written."""

    @dataclass
    class Precision:
        mixed_precision: Literal["auto", "bf16", "fp16", "no"] = "auto"
        schedule: Literal["cosine", "constant"] = "cosine"

    f = tmp_path / "c.yaml"
    f.write_text("mixed_precision: no\n")
    assert load_config(Precision, f).mixed_precision == "no"
    assert load_config(Precision, None, ["mixed_precision=no"]).mixed_precision == "no"
    f.write_text("mixed_precision: yes\n")  # no 'yes' among the choices: still refused
    with pytest.raises(ConfigError, match="mixed_precision.*expects one of 'auto', 'bf16', 'fp16', 'no', got True"):
        load_config(Precision, f)
    f.write_text("schedule: no\n")
    with pytest.raises(ConfigError, match="schedule.*got False"):
        load_config(Precision, f)
