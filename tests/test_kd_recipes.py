"""Tiny end-to-end runs of every KD recipe on synthetic BUSI, resume, and bad inputs."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from downstream.kd.__main__ import main

COMMON = ["image_size=32", "num_workers=0"]
VIT = [
    "teacher.vit_kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
    "teacher.convnext_kwargs={depths: [1, 1, 1, 1], dims: [8, 16, 32, 64]}",
    "teacher.head_hidden=16",
    "teacher.train.epochs=1",
    "teacher.train.batch_size=16",
    "student.train.epochs=1",
    "student.train.batch_size=16",
    "efficiency.runs=2",
    "efficiency.warmup=1",
]


def train(recipe: str, data, out, *overrides: str) -> dict:
    assert main(["train", "--recipe", recipe, "--data", str(data), "--out", str(out), *COMMON, *overrides]) == 0
    return json.loads((out / "metrics.json").read_text())


def fails(recipe: str, data, out, capsys, *overrides: str) -> str:
    """Run the CLI expecting a user error: exit status 2 and one ``error: ...`` line; returns it."""
    capsys.readouterr()
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", recipe, "--data", str(data), "--out", str(out), *COMMON, *overrides])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and "Traceback" not in err
    return err


def check_common(m: dict, out, models: list[str]) -> None:
    assert set(models) <= set(m["models"])
    for name in models:
        mm = m["models"][name]
        assert 0.0 <= mm["accuracy"] <= 1.0
        assert mm["n_images"] == m["splits"]["test"]
        assert sum(map(sum, mm["confusion_matrix"])) == m["splits"]["test"]
    for f in ("config.yaml", "splits.json", "report.md", "curves.png"):
        assert (out / f).is_file(), f


@pytest.fixture(scope="module")
def vit_run(busi_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("vit_mobilenet")
    return out, train("vit_mobilenet", busi_dir, out, *VIT)


def test_vit_mobilenet_end_to_end(vit_run):
    out, m = vit_run
    check_common(m, out, ["teacher", "scratch", "distilled"])
    assert m["classes"] == ["normal", "benign", "malignant"]
    eff = m["efficiency"]
    assert eff["student"]["fps"] > 0 and eff["teacher"]["mb"] > 0
    report = (out / "report.md").read_text()
    assert "Table 1. Class-wise diagnostic performance" in report and "Table 2. Efficiency comparison" in report
    assert "| Frame Rate |" in report and "MobileNet-V3 from scratch" in report
    for f in ("confusion.png", "efficiency.png", "teacher/model.safetensors"):
        assert (out / f).is_file(), f
    # the scratch baseline and the distilled student start from the same weights: same parameter count
    assert m["models"]["scratch"]["params"] == m["models"]["distilled"]["params"]


def test_rerun_reuses_finished_stages(vit_run, busi_dir, capsys):
    out, first = vit_run
    capsys.readouterr()
    again = train("vit_mobilenet", busi_dir, out, *VIT)
    printed = capsys.readouterr().err  # messages go to stderr through logging
    for stage in ("teacher", "scratch", "distilled"):
        assert f"{stage}: reusing the finished stage" in printed
        assert again["models"][stage]["accuracy"] == first["models"][stage]["accuracy"]
        assert again["models"][stage]["confusion_matrix"] == first["models"][stage]["confusion_matrix"]


def test_given_teacher_checkpoint_is_loaded_not_trained(vit_run, busi_dir, capsys):
    out, first = vit_run
    ckpt = out / "teacher" / "model.safetensors"
    capsys.readouterr()
    # same folder: the scratch stage is reused, the distilled one retrains against the loaded teacher
    m = train("vit_mobilenet", busi_dir, out, *VIT, f"teacher.checkpoint={ckpt}")
    printed = capsys.readouterr().err
    assert "scratch: reusing the finished stage" in printed and "distilled: reusing" not in printed
    assert m["models"]["teacher"]["confusion_matrix"] == first["models"]["teacher"]["confusion_matrix"]
    assert m["history"]["teacher"] == [] and len(m["history"]["distilled"]) == 1


def test_a_changed_setting_retrains_its_stage_and_the_stages_after_it(vit_run, busi_dir, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(vit_run[0], out)
    capsys.readouterr()
    train("vit_mobilenet", busi_dir, out, *VIT, "teacher.dropout=0.0")  # the teacher's head only
    printed = capsys.readouterr().err
    assert "teacher: reusing" not in printed and "distilled: reusing" not in printed
    assert "scratch: reusing the finished stage" in printed


def test_a_teacher_that_saw_the_test_split_is_refused(vit_run, busi_dir, tmp_path, capsys):
    """The checkpoint records the images it learnt from: handed to a run whose test split holds some of
    them (another split seed here; an older run's teacher in practice), the test numbers would be
    inflated, so the run stops before training anything."""
    out, _ = vit_run
    ckpt = out / "teacher" / "model.safetensors"
    err = fails("vit_mobilenet", busi_dir, tmp_path / "o", capsys, *VIT, f"teacher.checkpoint={ckpt}", "split.seed=7")
    assert f"teacher.checkpoint: {ckpt} was trained on " in err and " of this run's " in err
    assert "train the teacher on this split, or give split.file of the run that trained it" in err
    assert not (tmp_path / "o" / "teacher").exists() and not (tmp_path / "o" / "distilled").exists()
    # what it records: exactly the run's training and validation images, none of its test images
    from safetensors import safe_open

    from shards.exclusions import file_sha1

    with safe_open(str(ckpt), framework="pt") as fh:
        recorded = set(json.loads(fh.metadata()["trained_on"]))
    splits = json.loads((out / "splits.json").read_text())
    root, images = Path(splits["root"]), splits["images"]
    digest = {i: file_sha1(root / images[i]) for p in ("train", "val", "test") for i in splits[p]}
    assert recorded == {digest[i] for p in ("train", "val") for i in splits[p]}
    assert not recorded & {digest[i] for i in splits["test"]}


def test_teacher_checkpoint_of_another_architecture_is_a_clear_error(vit_run, busi_dir, tmp_path, capsys):
    out, _ = vit_run
    ckpt = out / "teacher" / "model.safetensors"
    with pytest.raises(SystemExit) as exc:
        main(
            [
                "train",
                "--recipe",
                "nanoray",
                "--data",
                str(busi_dir),
                "--out",
                str(tmp_path),
                *COMMON,
                f"teacher.checkpoint={ckpt}",
                "teacher.kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
            ]
        )
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert (
        err.startswith("error: teacher.checkpoint:")
        and "different architecture" in err
        and "hybrid_vit_convnext" in err
    )
    # same recipe, other width: caught the same way
    err = fails(
        "vit_mobilenet", busi_dir, tmp_path / "b", capsys, *VIT, "teacher.head_hidden=24", f"teacher.checkpoint={ckpt}"
    )
    assert "different architecture (head_hidden: file has 16, recipe builds 24)" in err


def test_nanoray_end_to_end_with_gradcam(busi_dir, tmp_path):
    m = train(
        "nanoray",
        busi_dir,
        tmp_path,
        "teacher.kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
        "teacher.train.epochs=1",
        "student.train.epochs=1",
        "teacher.train.batch_size=16",
        "student.train.batch_size=16",
        "gradcam.images=3",
    )
    check_common(m, tmp_path, ["teacher", "scratch", "distilled"])
    assert m["splits"]["test"] < m["splits"]["train"] / 4  # the paper's 80/10/10
    report = (tmp_path / "report.md").read_text()
    assert "NanoRay V2 (Distilled)" in report and "gradcam.png" in report
    assert (tmp_path / "gradcam.png").stat().st_size > 1000


def test_hdkd_end_to_end_with_data_size_sweep(busi_dir, tmp_path):
    m = train(
        "hdkd",
        busi_dir,
        tmp_path,
        "model.channels=[8,16,24]",
        "model.teacher_blocks=[2,1,2]",
        "model.student_blocks=[1,1,1]",
        "model.dim=32",
        "model.heads=2",
        "model.depth=1",
        "teacher.train.epochs=1",
        "teacher.train.batch_size=16",
        "student.train.epochs=1",
        "student.train.warmup_epochs=0",
        "student.train.batch_size=16",
        "sweep.per_class=[3,0]",
    )
    check_common(m, tmp_path, ["teacher", "student_3", "hdkd_3", "student_0", "hdkd_0"])
    sweep = m["sweep"]
    assert [row["n_train"] for row in sweep] == [9, m["splits"]["train"]]  # 3 per class x 3 classes, then all
    assert m["complexity"]["hdkd"]["params"] > m["complexity"]["student"]["params"]
    report = (tmp_path / "report.md").read_text()
    assert "Tables 3-4. Test accuracy across data sizes" in report and "9 images (3/class)" in report
    assert (tmp_path / "data_size.png").is_file()
    assert m["history"]["hdkd_all"][0]["train_feat"] >= 0  # the feature-distillation term was trained


def test_csa_moe_end_to_end_repeats_and_gates(busi_dir, tmp_path):
    m = train(
        "csa_moe",
        busi_dir,
        tmp_path,
        "model.backbone_kwargs={layers: [1, 1, 1, 1]}",
        "train.epochs=1",
        "train.batch_size=16",
        "repeats=2",
        "variants=[csa_moe,resnet18]",
    )
    assert m["classes"] == ["benign", "malignant"] and m["positive"] == "malignant"
    res = m["models"]["csa_moe"]
    assert len(res["runs"]) == 2 and set(res["mean"]) == {"accuracy", "precision", "recall", "f1", "auc"}
    gates = res["gates"]["train"]
    assert len(gates) == 1 and all(sum(g) == pytest.approx(1.0, abs=1e-5) for g in gates)
    assert len(gates[0]) == 3 and len(res["gates"]["val"]) == 1
    assert "gates" not in m["models"]["resnet18"]
    report = (tmp_path / "report.md").read_text()
    assert "CSA-MoE-Net | ✓ | ✓" in report and "±" in report and "Table IV" in report
    assert (tmp_path / "gates_csa_moe.png").is_file()


def test_csa_moe_without_masks_is_a_clear_error(busi_dir, tmp_path, capsys):
    data = tmp_path / "nomask"
    shutil.copytree(busi_dir, data, ignore=shutil.ignore_patterns("*_mask*"))
    err = fails("csa_moe", data, tmp_path / "out", capsys, "repeats=1")
    assert "csa_moe needs a lesion mask for every image" in err and "_mask.png" in err


def test_unknown_recipe_variant_and_key(busi_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "deit", "--data", str(busi_dir), "--out", str(tmp_path)])
    assert exc.value.code == 2
    assert "unknown recipe 'deit'; valid: vit_mobilenet, nanoray, hdkd, csa_moe" in capsys.readouterr().err
    assert "unknown variant(s) resnet50" in fails("csa_moe", busi_dir, tmp_path, capsys, "variants=[csa_moe,resnet50]")
    assert "unknown key 'kd.beta'" in fails("vit_mobilenet", busi_dir, tmp_path, capsys, "kd.beta=3")
    fresh = tmp_path / "fresh"
    assert "student.train.epochs: expected at least 1, got 0" in fails(
        "nanoray", busi_dir, fresh, capsys, "student.train.epochs=0"
    )
    assert "error: image_size: expected at least 32 pixels, got 0" in fails(
        "nanoray", busi_dir, fresh, capsys, "image_size=0"
    )
    assert not fresh.exists()  # refused before the output folder was made


@pytest.mark.parametrize(
    ("recipe", "override", "message"),
    [
        ("nanoray", "classes=[benign]", "classes: expected two or more distinct classes to tell apart, got ['benign']"),
        ("hdkd", "model.heads=3", "model.heads: 3 does not divide model.dim 256"),
        ("hdkd", "model.channels=[16,24]", "model.channels: expected 3 positive integers (one per MBCSA stage)"),
        ("hdkd", "image_size=40", "image_size: HDKD needs a multiple of 16 (stride 8 x model.patch 2), got 40"),
        ("hdkd", "sweep.per_class=[]", "sweep.per_class: expected distinct integers >= 0 (0 = all training data)"),
        ("hdkd", "sweep.per_class=[-1]", "sweep.per_class: expected distinct integers >= 0"),
        ("nanoray", "gradcam.images=-1", "gradcam.images: expected an integer >= 0 (0: no panel), got -1"),
        ("vit_mobilenet", "efficiency.runs=-1", "efficiency.runs: expected an integer >= 0, got -1"),
        ("seg_unet", "loss.pair_nodes=0", "loss.pair_nodes: expected at least 1 node per side, got 0"),
        ("vit_mobilenet", "loss.temperature=nan", "command line: key 'loss.temperature' expects a number, not NaN"),
        ("nanoray", "loss.kd_weight=inf", "loss: ce_weight and kd_weight must be finite, >= 0 and not both 0"),
        ("nanoray", "loss.temperature=inf", "loss.temperature: must be a finite number > 0, got inf"),
        ("seg_unet", "student.decoder_channels=[16,8]", "student.decoder_channels: expected 5 positive widths"),
        ("vit_mobilenet", "student.model=nonexistent_model", "student.model: unknown timm model 'nonexistent_model'"),
        ("nanoray", "teacher.model=vit_nonexistent", "teacher.model: unknown timm model 'vit_nonexistent'"),
        ("vit_mobilenet", "teacher.dropout=1.5", "teacher.dropout: expected a probability from 0 to below 1, got 1.5"),
        ("vit_mobilenet", "teacher.head_hidden=0", "teacher.head_hidden: expected a width of at least 1, got 0"),
        ("csa_moe", "model.gate_dropout=2", "model.gate_dropout: expected a probability from 0 to below 1, got 2.0"),
        ("csa_moe", "model.erode_dilate=-1", "model.erode_dilate: expected at least 1 morphology iteration, got -1"),
        ("csa_moe", "augment.hflip=2", "augment.hflip: expected a probability from 0 to 1, got 2.0"),
        ("hdkd", "teacher.augment.degrees=-5", "teacher.augment.degrees: expected a rotation range from 0 to 180"),
        ("nanoray", "num_workers=-1", "num_workers: expected 0 (load in the main process) or more, got -1"),
        ("nanoray", "teacher.encoder=/nonexistent", "teacher.encoder: encoder '/nonexistent': unknown encoder spec"),
    ],
)
def test_nonsense_settings_are_refused_before_training(busi_dir, tmp_path, capsys, recipe, override, message):
    out = tmp_path / "o"
    err = fails(recipe, busi_dir, out, capsys, override)
    assert err == f"error: {message}" or err.startswith(f"error: {message}"), err
    assert not out.exists()


def test_summary_json_lists_every_model_against_the_paper(capsys):
    assert main(["summary", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    by = {(r["recipe"], r["model"]): r for r in rows}
    assert {r["recipe"] for r in rows} == {"vit_mobilenet", "nanoray", "hdkd", "csa_moe", "seg_unet"}
    assert by[("seg_unet", "student: U-Net on EfficientNet-Lite0")]["params_m"] == pytest.approx(5.198, abs=0.001)
    hdkd = [r for r in rows if r["recipe"] == "hdkd"]
    assert [round(r["params"] / 1e6, 2) for r in hdkd[:3]] == [3.95, 3.72, 3.73]
    csa = by[("csa_moe", "CSA-MoE-Net (3 views)")]
    assert abs(csa["params_gap_pct"]) < 1.0 and csa["gmacs_224"] == pytest.approx(5.472, rel=0.01)
    assert by[("vit_mobilenet", "student: MobileNetV3-Small (3 classes)")]["fp32_mb"] == pytest.approx(5.85, abs=0.01)
    assert main(["summary", "--recipe", "hdkd"]) == 0
    assert "| hdkd |" in capsys.readouterr().out


@pytest.mark.parametrize("recipe", ["vit_mobilenet", "nanoray", "hdkd", "csa_moe"])
def test_shipped_tiny_configs_layer_on_the_paper_preset(recipe, repo_root):
    from downstream.kd.registry import reproduction_config

    tiny = repo_root / "downstream" / "kd" / "configs" / f"tiny_{recipe}.yaml"
    cfg = reproduction_config(recipe, [tiny])
    assert cfg.image_size == 64 and cfg.num_workers == 0
    paper = reproduction_config(recipe)
    assert paper.image_size == 224  # the paper's resolution comes from the preset
    assert cfg.seed == paper.seed == 42


def test_presets_hold_each_papers_settings():
    """Paper 000: alpha*CE + (1-alpha)*T^2*KL (alpha 0.5, T 4), AdamW 1e-4 wd 0.01, 15 epochs; paper 003:
    alpha*T^2*KL + (1-alpha)*CE (alpha 0.25, T 4); paper 001: (1-a)*CE + a*t^2*KL + lambda*l_feat (a 0.5,
    t 1, lambda 10, alpha_f 1), student AdamW cosine 5e-5 -> 2e-5 with 5 warm-up epochs, wd 0.1, batch 32,
    teacher Adam 1e-3; paper 004: Adam 5e-5, no decay, 30 epochs, batch 32, plateau x0.5 patience 3 min 1e-6."""
    from downstream.kd.registry import reproduction_config

    vm = reproduction_config("vit_mobilenet")
    assert (vm.loss.ce_weight, vm.loss.kd_weight, vm.loss.temperature) == (0.5, 0.5, 4.0)
    t = vm.student.train
    assert (t.optimizer, t.lr, t.weight_decay, t.epochs, t.schedule) == ("adamw", 1e-4, 0.01, 15, "none")
    assert vm.teacher.train == vm.student.train and vm.split.ratios == [439, 78, 263]
    nr = reproduction_config("nanoray")
    assert (nr.loss.ce_weight, nr.loss.kd_weight, nr.loss.temperature) == (0.75, 0.25, 4.0)
    assert nr.split.ratios == [0.8, 0.1, 0.1]
    hd = reproduction_config("hdkd")
    loss = hd.loss
    assert (loss.ce_weight, loss.kd_weight, loss.temperature, loss.feature_weight, loss.stage_exponent) == (
        0.5,
        0.5,
        1.0,
        10.0,
        1.0,
    )
    s = hd.student.train
    assert (s.optimizer, s.lr, s.min_lr, s.schedule, s.warmup_epochs, s.weight_decay, s.batch_size) == (
        "adamw",
        5e-5,
        2e-5,
        "cosine",
        5,
        0.1,
        32,
    )
    assert (hd.teacher.train.optimizer, hd.teacher.train.lr, hd.teacher.train.schedule) == ("adam", 1e-3, "none")
    cm = reproduction_config("csa_moe")
    c = cm.train
    assert (c.optimizer, c.lr, c.weight_decay, c.epochs, c.batch_size) == ("adam", 5e-5, 0.0, 30, 32)
    assert (c.schedule, c.plateau_factor, c.plateau_patience, c.min_lr) == ("plateau", 0.5, 3, 1e-6)
    assert cm.classes == ["benign", "malignant"] and cm.repeats == 20 and cm.split.ratios == [0.7, 0.15, 0.15]


def test_a_folder_of_the_users_own_files_is_refused(busi_dir, tmp_path, capsys):
    (tmp_path / "config.yaml").write_text("my: precious\n")  # a name kd train writes too
    err = fails("nanoray", busi_dir, tmp_path, capsys)
    assert f"--out {tmp_path}: holds files downstream.kd train --recipe nanoray did not write; give it a new" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]
    assert (tmp_path / "config.yaml").read_text() == "my: precious\n"


def test_one_recipe_per_folder(busi_dir, tmp_path, capsys):
    """Recipes write files of the same names (report.md, splits.json, stage folders): a second recipe
    in one folder would mix its outputs with the first's."""
    hdkd, legacy = tmp_path / "hdkd", tmp_path / "legacy"
    for folder, mark in ((hdkd, "downstream.kd train --recipe hdkd"), (legacy, "downstream.kd train")):
        folder.mkdir()
        (folder / ".sonodistill-stage").write_text(mark + "\n")
    err = fails("nanoray", busi_dir, hdkd, capsys)
    assert err.endswith(
        "holds the output of downstream.kd train --recipe hdkd; give downstream.kd train --recipe nanoray a folder "
        "of its own"
    )
    # a folder marked before marks named the recipe is taken as the rerun's own: the run goes on to its data
    (tmp_path / "empty").mkdir()
    assert "expected one sub-folder per class" in fails("nanoray", tmp_path / "empty", legacy, capsys)
    # a data folder that is not there is refused before any output folder is made
    assert "data folder not found" in fails("nanoray", tmp_path / "none", tmp_path / "new", capsys)
    assert not (tmp_path / "new").exists()


def test_a_failed_rerun_keeps_the_config_of_the_results_beside_it(vit_run, busi_dir, tmp_path, monkeypatch, capsys):
    """config.yaml is written with metrics.json and report.md: a rerun with other settings that fails
    (or is stopped) halfway leaves the folder's config describing the results it holds."""
    from downstream.kd import registry
    from sonodistill.errors import UserError

    out = Path(shutil.copytree(vit_run[0], tmp_path / "run"))
    before = {f: (out / f).read_bytes() for f in ("config.yaml", "metrics.json", "report.md")}
    paper = registry.reproduction("vit_mobilenet")

    def fails_halfway(cfg, data, out):
        raise UserError("the teacher stage ran out of memory")

    monkeypatch.setattr(registry, "reproduction", lambda name: fails_halfway_paper)
    fails_halfway_paper = type(
        "P", (), {"config": paper.config, "reproduce": staticmethod(fails_halfway), "check": paper.check}
    )()
    err = fails("vit_mobilenet", busi_dir, out, capsys, *VIT, "student.train.epochs=3")
    assert err == "error: the teacher stage ran out of memory"
    assert {f: (out / f).read_bytes() for f in before} == before


def test_the_gradcam_panel_takes_classes_in_turn_and_fills_up_from_the_larger_ones():
    from downstream.data import Record
    from downstream.kd.papers.nanoray import in_turn

    records = [Record(f"{c}{i}", f"{c}{i}.png", label=label) for c, label, k in (("b", 0, 4), ("m", 1, 1), ("n", 2, 1))
               for i in range(k)]  # fmt: skip
    assert [r.id for r in in_turn(records, 4)] == ["b0", "m0", "n0", "b1"]  # 4 asked, 4 drawn
    assert [r.id for r in in_turn(records, 10)] == ["b0", "m0", "n0", "b1", "b2", "b3"]


def test_bench_edge_deploys_a_runs_student_on_the_split_its_config_names(vit_run, tmp_path):
    """bench/edge.py --run takes a kd train run and a sweep's KD cell, whose config names the sweep's
    split file; a split that is gone is one line, never a new split with other test images."""
    import importlib.util

    import yaml

    from sonodistill.errors import UserError

    spec = importlib.util.spec_from_file_location("bench_edge", Path(__file__).parents[1] / "bench" / "edge.py")
    edge = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(edge)
    out, metrics = vit_run
    _, test, _ = edge.run_student(out)
    assert len(test) == metrics["splits"]["test"]
    cell = tmp_path / "cell"  # as a sweep lays a KD cell out: the split lives beside, not inside
    shutil.copytree(out, cell)
    (cell / "splits.json").rename(tmp_path / "sweep-split.json")
    config = yaml.safe_load((cell / "config.yaml").read_text())
    config["split"]["file"] = str(tmp_path / "sweep-split.json")
    (cell / "config.yaml").write_text(yaml.safe_dump(config))
    _, test, _ = edge.run_student(cell)
    assert len(test) == metrics["splits"]["test"]
    config["split"]["file"] = "sweep-split.json"  # a sweep run with a relative out, read from elsewhere
    (cell / "config.yaml").write_text(yaml.safe_dump(config))
    edge.run_student.cache_clear()
    _, test, _ = edge.run_student(cell)
    assert len(test) == metrics["splits"]["test"]
    (tmp_path / "sweep-split.json").unlink()
    with pytest.raises(UserError, match=r"its split \(.*sweep-split.json\) is gone; the test set is unknown"):
        edge.run_student.cache_clear()
        edge.run_student(cell)


def test_a_stage_trained_after_reused_ones_equals_an_uninterrupted_runs(busi_dir, tmp_path):
    """The distilled stage retrained after the teacher and scratch stages were reused (a run stopped
    in it) gives the very weights of one uninterrupted run: each stage trains from random state of
    its own, whatever the stages before it consumed (dropout here)."""
    args = [*VIT, "student.kwargs={drop_rate: 0.5}", "student.train.epochs=2"]
    whole = tmp_path / "whole"
    first = train("vit_mobilenet", busi_dir, whole, *args)
    resumed = tmp_path / "resumed"
    shutil.copytree(whole, resumed)
    shutil.rmtree(resumed / "distilled")  # stopped while the distilled student trained
    again = train("vit_mobilenet", busi_dir, resumed, *args)
    for f in ("scratch", "distilled"):
        assert (resumed / f / "model.safetensors").read_bytes() == (whole / f / "model.safetensors").read_bytes(), f
    assert again["models"]["distilled"]["confusion_matrix"] == first["models"]["distilled"]["confusion_matrix"]


def test_another_precision_trains_the_stages_again(vit_run, busi_dir, tmp_path):
    """fp32 stages are not reused by a bf16 rerun (a process of its own: accelerate fixes the
    precision once per process)."""
    out = tmp_path / "copy"
    shutil.copytree(vit_run[0], out)
    cmd = [sys.executable, "-m", "downstream.kd", "train", "--recipe", "vit_mobilenet", "--data", str(busi_dir)]
    cmd += ["--out", str(out), *COMMON, *VIT, "efficiency.runs=0", "mixed_precision=bf16"]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "reusing the finished stage" not in done.stderr  # fp32 weights are not bf16 ones
    assert json.loads((out / "metrics.json").read_text())["config"]["mixed_precision"] == "bf16"


def test_a_users_folder_with_a_report_is_not_taken_for_a_run(busi_dir, tmp_path, capsys):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "report.md").write_text("my notes\n")
    err = fails("vit_mobilenet", busi_dir, mine, capsys, *VIT)
    assert str(mine) in err and sorted(p.name for p in mine.iterdir()) == ["report.md"]
    assert (mine / "report.md").read_text() == "my notes\n"


def test_a_refused_first_run_leaves_no_folder(vit_run, busi_dir, tmp_path, capsys):
    """A teacher checkpoint of another recipe is refused after the split was written: the folder the
    run made goes again, split and mark with it."""
    out = tmp_path / "new"
    ckpt = vit_run[0] / "teacher" / "model.safetensors"
    err = fails(
        "nanoray",
        busi_dir,
        out,
        capsys,
        "teacher.kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
        f"teacher.checkpoint={ckpt}",
        "gradcam.images=0",
    )
    assert "different architecture" in err and not out.exists()
