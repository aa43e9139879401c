"""The encoder carries its provenance (issue 18, part 3): shards built with ``--exclude`` of a task's
split -> a tiny pretraining run -> export writes the exclusion sets into config.json and the model
card; a sweep marks the cells whose encoder was not checked against the task's test split (with a
footnote naming why) and leaves the checked ones bare; ``strict_decontamination=true`` refuses."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dist.tiny_pretrain import tiny_config
from test_downstream_models import save_encoder

from downstream import run as run_cli
from downstream import sweep as sweep_cli
from downstream.config import RunConfig
from downstream.decontamination import check_encoder, split_digests
from downstream.runner import encoder_check, prepare
from downstream.splits import SplitConfig
from downstream.sweep import SweepConfig, run_sweep
from pretrain.export import export
from pretrain.trainer import _manifest_summary, train
from shards.build import BuildSettings, build_shards
from shards.exclusions import content_hash, image_digests, load_exclusion, load_exclusions, public_record
from sonodistill.config import load_config
from sonodistill.errors import UserError
from sonodistill.provenance import local_paths

REPO = Path(__file__).resolve().parents[1]
SPLIT = SplitConfig(ratios=[0.6, 0.2, 0.2], duplicates=False)


def _busi_run(busi_dir: Path, splits: Path, encoder: str = "rand", **kw) -> RunConfig:
    return RunConfig(task="busi-cls", data=str(busi_dir), encoder=encoder, split=SplitConfig(**{
        **SPLIT.__dict__, "file": str(splits)}), num_workers=0, **kw)  # fmt: skip


@pytest.fixture(scope="module")
def world(busi_dir, corpus_dir, tiny_teacher_dir, tmp_path_factory) -> dict[str, Path]:
    """The BUSI split a sweep uses, shards built against its test part, and the exported encoder."""
    root = tmp_path_factory.mktemp("decontam")
    splits = root / "busi-splits.json"
    prepare(_busi_run(busi_dir, splits))  # what the sweep's first cell would write
    shards = root / "shards"
    sources = {p.name: str(p) for p in sorted(corpus_dir.iterdir()) if p.is_dir()}
    build_shards(
        sources, shards, BuildSettings(size=64, samples_per_shard=16, workers=1), progress=False,
        exclusions=load_exclusions([f"{splits}:test"]),
    )  # fmt: skip
    train(tiny_config(shards, tiny_teacher_dir, root / "run", train__max_steps=2, train__save_every=2))
    enc = export(root / "run", root / "export")
    return {"root": root, "splits": splits, "shards": shards, "export": enc}


def test_export_writes_the_exclusion_sets_into_config_and_card(world):
    test_set = load_exclusion(f"{world['splits']}:test")
    config = json.loads((world["export"] / "config.json").read_text())
    [x] = config["sonodistill"]["data"]["exclusions"]
    assert x["name"] == "busi:test" and x["images"] == len(test_set.images)
    assert x["content_hash"] == test_set.content_hash and x["part_hashes"] == {"test": test_set.content_hash}
    assert x["frames_removed"] == 0 and "root" not in x and "spec" not in x  # no local path
    assert x["image_digests"] == image_digests(test_set.digests) and len(x["image_digests"][0]) == 16
    assert config["sonodistill"]["data"]["sources"]  # sources and counts
    card = (world["export"] / "README.md").read_text()
    assert "### Evaluation sets kept out" in card and f"| busi:test | {len(test_set.images)} |" in card
    assert f"| `{test_set.content_hash}` | test `{test_set.content_hash}` | 0 |" in card  # each part's own hash too
    published = card + json.dumps(config)
    assert not local_paths(published, [world["root"], world["splits"].parent])


def test_a_corpus_without_exclude_records_no_set_and_the_card_says_so(shard_dir, world):
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert _manifest_summary(str(shard_dir), manifest)["exclusions"] == []
    manifest.pop("exclusions", None)  # a manifest from before exclusion sets existed
    assert _manifest_summary(str(shard_dir), manifest)["exclusions"] == []


def test_check_compares_the_test_split_digests(world, busi_dir, tmp_path):
    rc = _busi_run(busi_dir, world["splits"])
    catalog, splits, _ = prepare(rc)
    h = split_digests(catalog, splits.test)
    assert content_hash(h) == load_exclusion(f"{world['splits']}:test").content_hash  # as the exclusion set is
    checked = check_encoder(str(world["export"]), h)
    assert checked.status == "checked" and checked.matched_set == "busi:test"
    assert check_encoder(f"local-dir:{world['export']}", h).status == "checked"
    assert check_encoder("rand", h).status == "untrained"
    assert check_encoder("timm:resnet50", h).reason == "no provenance"
    assert check_encoder(str(save_encoder(tmp_path / "plain", "resnet18")), h).reason == "no provenance"
    val = split_digests(catalog, splits.val)
    assert val != h and check_encoder(str(world["export"]), val).reason == "set differs"
    noset = tmp_path / "noset"
    shutil.copytree(world["export"], noset)
    config = json.loads((noset / "config.json").read_text())
    config["sonodistill"]["data"]["exclusions"] = []  # what a corpus built without --exclude exports
    (noset / "config.json").write_text(json.dumps(config))
    assert check_encoder(str(noset), h).reason == "no exclusion set"


def test_a_set_holding_the_test_split_among_more_images_checks_it(world, busi_dir, tmp_path):
    """Excluding the whole dataset folder (or a folder of several datasets' test images) is the safest
    choice: a test split whose every image is in the sets counts as checked, one image short does not."""
    catalog, splits, _ = prepare(_busi_run(busi_dir, world["splits"]))
    h = split_digests(catalog, splits.test)

    def encoder(name: str, *sets) -> str:
        folder = tmp_path / name
        folder.mkdir()
        records = [public_record(x.record(0)) for x in sets]
        (folder / "config.json").write_text(json.dumps({"sonodistill": {"data": {"exclusions": records}}}))
        return str(folder)

    whole = load_exclusion(str(busi_dir))  # every image of the dataset, masks too
    assert whole.content_hash != content_hash(h) and len(whole.images) > len(h)
    check = check_encoder(encoder("whole", whole), h)
    assert check.status == "checked" and check.matched_set == busi_dir.name
    index = catalog.by_id()
    some, rest = tmp_path / "some", tmp_path / "rest"  # the test images in two folders: two sets together
    for k, i in enumerate(splits.test):
        (some if k % 2 else rest).mkdir(exist_ok=True)
        shutil.copyfile(index[i].image, (some if k % 2 else rest) / f"{k}{Path(index[i].image).suffix}")
    both = check_encoder(encoder("both", load_exclusion(f"a={some}"), load_exclusion(f"b={rest}")), h)
    assert both.status == "checked" and both.matched_set == "a+b"
    assert check_encoder(encoder("half", load_exclusion(f"a={some}")), h).reason == "set differs"


def test_a_hub_encoder_with_a_revision_is_checked_from_the_local_cache(world, busi_dir, tmp_path, monkeypatch):
    """``hf-hub:ID@REVISION`` (timm's form, which the loader takes) reads its cached config.json too;
    an id the Hub would refuse is an encoder without provenance, not a traceback."""
    from huggingface_hub import constants

    snapshot = tmp_path / "hub" / "models--lab--us" / "snapshots" / ("0" * 40)
    snapshot.mkdir(parents=True)
    (snapshot.parents[1] / "refs").mkdir()
    (snapshot.parents[1] / "refs" / "main").write_text("0" * 40)
    shutil.copy(world["export"] / "config.json", snapshot / "config.json")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    catalog, splits, _ = prepare(_busi_run(busi_dir, world["splits"]))
    h = split_digests(catalog, splits.test)
    assert check_encoder("hf-hub:lab/us", h).status == check_encoder("hf-hub:lab/us@main", h).status == "checked"
    assert check_encoder("hf-hub:lab/us@v2", h).reason == "no provenance"  # a revision not in the cache
    assert check_encoder("hf-hub:not a repo id!", h).reason == "no provenance"


def test_sweep_marks_unchecked_cells_and_strict_refuses(world, busi_dir, ddti_dir, tmp_path):
    plain = save_encoder(tmp_path / "plain", "resnet18")  # timm save_for_hf without data provenance
    out = tmp_path / "sweep"
    overrides = [
        f"busi={busi_dir}", f"ddti={ddti_dir}", f"out={out}", "tasks=[busi-cls,ddti-seg]",
        f"encoders=[Checked={world['export']},Plain={plain}]", "methods=[]", "modes=[linear]",
        "linear_fractions=[1.0]", "run.edge.enabled=false", "run.num_workers=0", "run.probe.epochs=5",
        "run.train.epochs=1", "run.image_size=32", "run.split.duplicates=false",
    ]  # fmt: skip
    cfg = load_config(SweepConfig, REPO / "downstream/configs/tiny.yaml", overrides)
    # the busi tasks' splits file is the one the shards were built against
    shutil.copyfile(world["splits"], _sweep_splits(cfg, "busi-cls"))
    run_sweep(cfg)
    t1 = (out / "tables.md").read_text().split("## Table 1")[1].split("## Table 2")[0]
    rows = {line.split("|")[1].strip(): [c.strip().strip("*") for c in line.strip("|").split("|")[1:]]
            for line in t1.splitlines() if line.startswith("| Checked") or line.startswith("| Plain")}  # fmt: skip
    # columns: DDTI Seg. Dice, IoU, BUSI Cls. Acc, F1
    assert all(" (" not in c for c in rows["Checked"][2:])  # checked against BUSI's test split: bare
    assert all(c.endswith(")") for c in rows["Checked"][:2] + rows["Plain"])  # marked
    assert "(set differs): its corpus was built against other images (busi:test)" in t1
    assert "(no provenance): its weights carry no data provenance" in t1
    contamination = (out / "tables.md").read_text().split("## Test-set contamination")[1]
    assert "| Model | DDTI Seg. | BUSI Cls. |" in contamination
    assert "| Checked | not checked: set differs | checked (busi:test) |" in contamination
    assert "| Plain | not checked: no provenance | not checked: no provenance |" in contamination
    results = [json.loads(line) for line in (out / "results.jsonl").read_text().splitlines()]
    status = {(r["cell"]["task_key"], r["cell"]["encoder_name"]): r["metrics"]["decontamination"] for r in results}
    assert status[("busi-cls", "Checked")]["matched_set"] == "busi:test"

    strict = load_config(SweepConfig, REPO / "downstream/configs/tiny.yaml",
                         [*overrides, f"out={tmp_path / 'strict'}", "run.strict_decontamination=true"])  # fmt: skip
    shutil.copyfile(world["splits"], _sweep_splits(strict, "busi-cls"))
    with pytest.raises(UserError, match=r"^strict_decontamination: encoder '.*plain' on busi-cls: no provenance: "):
        run_sweep(strict)
    assert not (tmp_path / "strict" / "results.jsonl").exists()  # refused before any cell ran
    # a KD row is refused by the encoder its teacher is built from, before any cell runs
    kd = load_config(SweepConfig, REPO / "downstream/configs/tiny.yaml", [
        *overrides, f"out={tmp_path / 'strict-kd'}", "run.strict_decontamination=true", "tasks=[busi-cls]",
        f"encoders=[Checked={world['export']}]", f"methods=[kd:nanoray?teacher.encoder={plain}]"])  # fmt: skip
    shutil.copyfile(world["splits"], _sweep_splits(kd, "busi-cls"))
    with pytest.raises(UserError, match=r"^strict_decontamination: encoder '.*plain' on busi-cls: no provenance: "):
        run_sweep(kd)
    assert not (tmp_path / "strict-kd" / "results.jsonl").exists()


def _sweep_splits(cfg: SweepConfig, task: str) -> Path:
    """Where the sweep keeps the split of ``task``'s dataset."""
    from downstream.sweep import cell_config, cells, parse_grid

    [rc] = {cell_config(cfg, c).split.file for c in cells(cfg, parse_grid(cfg)) if c.task.key == task}
    Path(rc).parent.mkdir(parents=True, exist_ok=True)
    return Path(rc)


def test_run_strict_refuses_an_unchecked_encoder_with_one_line(world, busi_dir, tmp_path, capsys):
    rc = _busi_run(busi_dir, world["splits"], encoder=str(world["export"]), strict_decontamination=True)
    catalog, splits, _ = prepare(rc)
    assert encoder_check(rc.encoder, rc.task, True, catalog, splits).status == "checked"  # its own split: allowed
    plain = save_encoder(tmp_path / "plain", "resnet18")  # a timm folder without data provenance
    argv = ["--task", "busi-cls", "--data", str(busi_dir), "--encoder", str(plain), "--out", str(tmp_path / "r"),
            f"split.file={world['splits']}", "split.ratios=[0.6,0.2,0.2]", "split.duplicates=false",
            "strict_decontamination=true", "num_workers=0"]  # fmt: skip
    with pytest.raises(SystemExit) as exc:
        run_cli.main(argv)
    err = capsys.readouterr().err.strip()
    assert exc.value.code == 2 and len(err.splitlines()) == 1
    assert err.startswith(f"error: strict_decontamination: encoder '{plain}' on busi-cls: no provenance: its weights")
    assert not (tmp_path / "r" / "config.yaml").exists()  # refused before anything of the run was written


def test_splits_only_writes_the_splits_a_sweep_will_use(busi_dir, ddti_dir, tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["--config", str(REPO / "downstream/configs/tiny.yaml"), f"busi={busi_dir}", f"ddti={ddti_dir}",
            f"out={out}", "tasks=[busi-cls,ddti-seg]", "run.split.duplicates=false", "--splits-only"]  # fmt: skip
    paths = sweep_cli.main(argv)["splits"]
    # tiny.yaml's kd:seg_unet needs a distilled encoder the splits are made before: --splits-only reads
    # no method; the paths the cells will use do not depend on methods
    cfg = load_config(SweepConfig, REPO / "downstream/configs/tiny.yaml", [*argv[2:-1], "methods=[]"])
    assert paths == [str(_sweep_splits(cfg, "busi-cls")), str(_sweep_splits(cfg, "ddti-seg"))]
    assert capsys.readouterr().out.split() == paths and not (out / "results.jsonl").exists()
    # a sweep of KD rows only (no encoder protocol) has the same splits to build a corpus against
    kd_only = [*argv[:-1], f"out={tmp_path / 'kd-only'}", "modes=[]", "--splits-only"]
    assert [Path(p).name for p in sweep_cli.main(kd_only)["splits"]] == [Path(p).name for p in paths]
    busi = load_exclusion(f"{paths[0]}:test")  # what shards.build --exclude reads
    assert busi.root == busi_dir and len(busi.images) == len(json.loads(Path(paths[0]).read_text())["test"])
