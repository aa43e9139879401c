"""The command lines: one-line errors for bad input, classification fine-tuning, embed, two ranks."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_downstream_models import one_thread, save_encoder  # noqa: F401  (shared helper + fixture)

from downstream import embed as embed_cli
from downstream import run as run_cli

REPO = Path(__file__).resolve().parents[1]


def _fail(capsys, argv: list[str], main=run_cli.main) -> str:
    """``main(argv)`` ends with exit 2 and exactly one ``error:`` line, returned."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ")
    return err[0]


@pytest.fixture()
def busi_copy(busi_dir, tmp_path) -> Path:
    return Path(shutil.copytree(busi_dir, tmp_path / "busi"))


def test_bad_inputs_are_one_line_errors(capsys, busi_copy, tmp_path):
    base = ["--data", str(busi_copy), "--mode", "linear", "--out", str(tmp_path / "o")]
    assert "unknown encoder spec" in _fail(capsys, ["--task", "busi-cls", "--encoder", "nope", *base])
    assert "unknown key 'train.epoch'" in _fail(
        capsys, ["--task", "busi-cls", "--encoder", "rand", *base, "train.epoch=3"]
    )
    for bad_value, message in (
        ("train.epochs=0", "train.epochs: expected at least 1, got 0"),
        ("train.batch_size=0", "train.batch_size: expected at least 1, got 0"),
        ("image_size=16", "image_size: expected at least 32 pixels, got 16"),
    ):
        assert _fail(capsys, ["--task", "busi-cls", "--encoder", "rand", *base, bad_value]) == f"error: {message}"
    assert not (tmp_path / "o").exists()
    bad = save_encoder(tmp_path / "bad", "resnet34")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architecture"] = "resnet50"
    (bad / "config.json").write_text(json.dumps(cfg))
    assert "weights do not match the architecture" in _fail(
        capsys, ["--task", "busi-cls", "--encoder", str(bad), *base]
    )

    mask = next((busi_copy / "benign").glob("*_mask.png"))
    w, h = Image.open(mask).size
    Image.new("L", (w + 3, h)).save(mask)
    msg = _fail(capsys, ["--task", "busi-seg", "--encoder", "rand", *base])
    assert mask.name in msg and f"is {w + 3}x{h} but its image" in msg
    mask.unlink()
    assert "without a mask file" in _fail(capsys, ["--task", "busi-seg", "--encoder", "rand", *base])
    shutil.rmtree(busi_copy / "normal")
    assert "missing: normal/" in _fail(capsys, ["--task", "busi-cls", "--encoder", "rand", *base])
    assert "data folder not found" in _fail(
        capsys,
        [
            "--task",
            "seg",
            "--encoder",
            "rand",
            "--data",
            str(tmp_path / "none"),
            "--mode",
            "linear",
            "--out",
            str(tmp_path / "o"),
        ],
    )


def test_classification_finetune_cli(capsys, busi_dir, tmp_path):
    export = save_encoder(tmp_path / "export", "resnet18", seed=2)
    out = tmp_path / "cls"
    run_cli.main(
        [
            "--task",
            "busi-cls",
            "--data",
            str(busi_dir),
            "--encoder",
            str(export),
            "--mode",
            "finetune",
            "--fraction",
            "0.5",
            "--seed",
            "1",
            "--out",
            str(out),
            "image_size=64",
            "train.epochs=2",
            "train.batch_size=8",
            "num_workers=1",
            "split.ratios=[0.6,0.2,0.2]",
        ]
    )
    printed = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    m = json.loads((out / "metrics.json").read_text())
    assert printed["test"]["accuracy"] == m["test"]["accuracy"]
    cm = np.array(m["test"]["confusion_matrix"])
    assert cm.shape == (3, 3) and cm.sum() == m["n_test"] == m["test"]["n_images"]
    assert m["test"]["accuracy"] == pytest.approx(np.trace(cm) / cm.sum())
    assert m["classes"] == ["normal", "benign", "malignant"] and m["best_epoch"] in (1, 2)  # epochs count from 1
    splits = json.loads((out / "splits.json").read_text())
    assert splits["ratios"] == [0.6, 0.2, 0.2] and set(splits["class_counts"]["test"]) == {
        "normal",
        "benign",
        "malignant",
    }
    for name in ("confusion.png", "curves.png", "best.safetensors", "config.yaml", "subset.json"):
        assert (out / name).is_file(), name
    # the resolved config reproduces the run
    import yaml

    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["fraction"] == 0.5 and resolved["train"]["epochs"] == 2 and resolved["encoder"] == str(export)
    # run again into the same folder as a probe without a checkpoint: the earlier run's is not left to
    # pass for this one's
    args = ["--task", "busi-cls", "--data", str(busi_dir), "--encoder", str(export), "--mode", "linear"]
    probe = ["image_size=64", "probe.epochs=2", "train.save_checkpoint=false", "split.ratios=[0.6,0.2,0.2]"]
    run_cli.main([*args, "--out", str(out), *probe])
    assert not (out / "best.safetensors").exists() and (out / "confusion.png").is_file()
    assert yaml.safe_load((out / "config.yaml").read_text())["mode"] == "linear"


def test_embed_tsne_and_silhouette(shard_dir, tmp_path):
    from sklearn.metrics import silhouette_score

    export = save_encoder(tmp_path / "export", "resnet18", seed=4)
    out = tmp_path / "embed"
    res = embed_cli.main(
        [
            "--shards",
            str(shard_dir),
            "--encoder",
            "R18-Rand=rand:resnet18",
            "--encoder",
            f"Export={export}",
            "--out",
            str(out),
            "--max-samples",
            "80",
            "--num-workers",
            "0",
            "--batch-size",
            "32",
        ]
    )
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert res["n_samples"] == min(80, manifest["num_samples"]) == sum(res["sources"].values())
    assert set(res["sources"]) <= set(manifest["sources"]) and len(res["sources"]) >= 3
    assert [e["name"] for e in res["encoders"]] == ["R18-Rand", "Export"]
    arrays = np.load(out / "tsne.npz")
    for e in res["encoders"]:
        assert -1 <= e["silhouette_cosine"] <= 1 and e["dim"] == 512
        xy = arrays[f"tsne/{e['name']}"]
        assert xy.shape == (res["n_samples"], 2)
        assert e["silhouette_tsne"] == pytest.approx(silhouette_score(xy, arrays["sources"]))
    assert json.loads((out / "embed.json").read_text()) == res
    with Image.open(out / "tsne.png") as im:
        assert im.size[0] > 3 * im.size[1] / 2  # panels side by side
    # the resolved config: the flags became their keys, and it loads back as an EmbedConfig
    from sonodistill.config import load_config

    saved = load_config(embed_cli.EmbedConfig, out / "config.yaml")
    assert saved.encoders == ["R18-Rand=rand:resnet18", f"Export={export}"]
    assert (saved.max_samples, saved.num_workers, saved.batch_size, saved.image_size) == (80, 0, 32, None)


def test_embed_launched_on_two_ranks_is_done_once_by_rank_0(shard_dir, tmp_path, monkeypatch):
    """Under torchrun every rank embedded every image, ran t-SNE and wrote the files; rank 0 does."""
    out = tmp_path / "embed"
    monkeypatch.setenv("RANK", "1")
    args = ["--shards", str(shard_dir), "--encoder", "rand:resnet18", "--out", str(out), "--max-samples", "20"]
    assert embed_cli.main(args) is None
    assert not out.exists()


def test_embed_settings_are_a_config_checked_before_reading(shard_dir, tmp_path, capsys, monkeypatch):
    odd = "B: odd #=" + str(tmp_path / "no such: folder")
    with pytest.raises(SystemExit) as exc:
        embed_cli.main(
            ["--shards", "s", "--encoder", "A=rand", "--encoder", odd, "--size", "64", "seed=3", "--show-config"]
        )
    assert exc.value.code == 0
    shown = capsys.readouterr().out
    cfg_file = tmp_path / "embed.yaml"
    cfg_file.write_text(shown)
    from sonodistill.config import load_config

    cfg = load_config(embed_cli.EmbedConfig, cfg_file)
    assert cfg.encoders == ["A=rand", odd] and (cfg.image_size, cfg.seed, cfg.shards) == (64, 3, "s")

    def fail(argv: list[str]) -> str:
        return _fail(capsys, argv, embed_cli.main)

    out = tmp_path / "o"
    base = ["--shards", str(shard_dir), "--out", str(out)]
    assert "encoders: give at least one encoder" in fail(base)
    assert "shards: give the shard folder" in fail(["--encoder", "rand", "--out", str(out)])
    assert "two panels share a name (A, A)" in fail([*base, "--encoder", "A=rand", "--encoder", "A=rand:resnet18"])
    assert "unknown encoder spec" in fail([*base, "--encoder", odd])
    assert "max_samples: need at least 3, got 2" in fail([*base, "--encoder", "rand", "max_samples=2"])
    assert "image_size: need at least 8, got 4" in fail([*base, "--encoder", "rand", "--size", "4"])
    assert "unknown key 'imagesize'" in fail([*base, "--encoder", "rand", "imagesize=64"])
    monkeypatch.setattr(embed_cli, "collect", lambda *a, **k: pytest.fail("shards read before the encoder check"))
    vit = "rand:vit_tiny_patch16_224"
    msg = f"image_size: 40 is not a multiple of {vit}'s patch size 16"
    assert msg in fail([*base, "--encoder", vit, "--size", "40"])
    monkeypatch.undo()
    assert not out.exists()  # every refusal left no folder (the one made for the run went again)
    (out / "run").mkdir(parents=True)
    (out / "audit.json").write_text("{}")
    assert "holds the output of downstream.audit" in fail([*base, "--encoder", "rand"])
    assert sorted(p.name for p in out.iterdir()) == ["audit.json", "run"]
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.yaml").write_text("my own\n")
    assert "holds files downstream.embed did not write" in fail(
        ["--shards", "s", "--encoder", "rand", "--out", str(mine)]
    )
    assert (mine / "config.yaml").read_text() == "my own\n" and len(list(mine.iterdir())) == 1
    # encoder specs are checked before the (here missing) shards are read; an empty Hub cache, offline
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty-hub-cache"))
    nowhere = ["--shards", str(tmp_path / "no-shards"), "--out", str(tmp_path / "o2")]
    assert "timm has no architecture 'nosuchnet'" in fail([*nowhere, "--encoder", "rand:nosuchnet"])
    assert "'resnet18' are not in the local cache" in fail([*nowhere, "--encoder", "timm:resnet18"])


@pytest.mark.dist
def test_two_rank_segmentation_under_torchrun(ddti_dir, tmp_path):
    out = tmp_path / "dist"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node",
        "2",
        "-m",
        "downstream.run",
        "--task",
        "ddti-seg",
        "--data",
        str(ddti_dir),
        "--encoder",
        "rand:resnet18",
        "--mode",
        "finetune",
        "--out",
        str(out),
        "image_size=64",
        "train.epochs=1",
        "train.batch_size=4",
        "num_workers=1",
        "train.eval_batch_size=5",
    ]
    proc = subprocess.Popen(
        cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    try:
        stdout, stderr = proc.communicate(timeout=300)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both ranks
        stdout, stderr = proc.communicate()
        pytest.fail(f"torchrun timed out: {stderr[-3000:]}")
    assert proc.returncode == 0, stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    split = json.loads((out / "splits.json").read_text())
    # gather_for_metrics: every test image counted exactly once across the two ranks (no padding duplicates)
    assert m["test"]["n_images"] == m["n_test"] == len(split["test"])
    assert sorted(p["id"] for p in m["test_per_image"]) == sorted(split["test"])
    assert stdout.count('"out"') == 1  # one result line, from rank 0
