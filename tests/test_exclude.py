"""Exclusion sets (shards.exclusions): build --exclude rejects copies of evaluation images as
eval_overlap and records the sets, inspect --overlap finds them in a finished set, the catalogue key,
splits.json as a set, and one-line errors."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_build import png_bytes, speckle_frame, tree_bytes

from downstream.data.read import read_catalog
from downstream.splits import load_or_make_splits
from shards import build as build_cli
from shards import inspect as inspect_cli
from shards.build import BuildSettings, build_part, build_shards
from shards.catalogue import load_corpus
from shards.exclusions import load_exclusion, load_exclusions
from sonodistill.errors import UserError
from sonodistill.parts import Part

EVAL = ["benign/benign (1).png", "malignant/malignant (1).png", "normal/normal (2).png"]


def _plant(src: Path, dst: Path, how: str) -> None:
    img = Image.open(src).convert("L")
    w, h = img.size
    if how == "renamed":
        shutil.copyfile(src, dst)
    elif how == "jpeg_resized":
        img.resize((int(w * 0.6), int(h * 0.75))).save(dst, quality=60)
    else:  # mirrored and cropped
        img.crop((int(0.1 * w), 0, w - int(0.05 * w), h - int(0.1 * h))).transpose(Image.FLIP_LEFT_RIGHT).save(dst)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, busi_dir, corpus_dir, corpus_truth) -> dict[str, Path]:
    """An evaluation folder of 3 BUSI images; a corpus of 5 other images plus a copy of each
    evaluation image under another name (renamed; JPEG and resized; mirrored and cropped)."""
    root = tmp_path_factory.mktemp("planted")
    evals, corpus = root / "eval", root / "corpus"
    for rel in EVAL:
        (evals / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(busi_dir / rel, evals / rel)
    corpus.mkdir()
    plain = [r["path"] for r in corpus_truth if r["kind"] == "ultrasound" and not r.get("duplicate_of")][:5]
    for i, rel in enumerate(plain):
        shutil.copyfile(corpus_dir / rel, corpus / f"plain_{i}{Path(rel).suffix}")
    for rel, (how, name) in zip(EVAL, [("renamed", "a.png"), ("jpeg_resized", "b.jpg"), ("mirrored", "c.png")]):
        _plant(busi_dir / rel, corpus / name, how)
    return {"eval": evals, "corpus": corpus, "root": root}


@pytest.fixture(scope="module")
def excluded_build(planted, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("excluded")
    manifest = build_shards(
        {"c": str(planted["corpus"])}, out, BuildSettings(workers=1), progress=False,
        exclusions=load_exclusions([str(planted["eval"])]),
    )  # fmt: skip
    return out, manifest


def test_build_rejects_copies_of_excluded_images_and_records_the_set(excluded_build, planted):
    out, manifest = excluded_build
    rejects = [json.loads(line) for line in (out / "rejects.jsonl").read_text().splitlines()]
    overlap = sorted((r["path"], r["values"]["matched"]) for r in rejects if r["reason"] == "eval_overlap")
    assert overlap == [("a.png", EVAL[0]), ("b.jpg", EVAL[1]), ("c.png", EVAL[2])]
    assert [r["values"]["flipped"] for r in sorted(rejects, key=lambda r: r["path"])] == [False, False, True]
    assert manifest["num_samples"] == 5 and manifest["rejected"]["eval_overlap"] == 3
    (entry,) = manifest["exclusions"]
    assert entry["name"] == "eval" and entry["images"] == 3 and entry["frames_removed"] == 3
    assert entry["content_hash"] == load_exclusion(str(planted["eval"])).content_hash
    assert manifest["identity"]["exclusions"][0]["content_hash"] == entry["content_hash"]
    assert not (out / ".exclusion-index").exists()  # the index lives only while the build runs


def test_an_exclusion_set_is_part_of_the_build_identity(excluded_build, planted, tmp_path):
    out, manifest = excluded_build
    again = build_shards({"c": str(planted["corpus"])}, out, BuildSettings(workers=1), progress=False,
                         exclusions=load_exclusions([str(planted["eval"])]))  # fmt: skip
    assert again == manifest  # same sets: already built
    with pytest.raises(UserError, match=r"exclusion sets differ \(eval -> none\)"):
        build_shards({"c": str(planted["corpus"])}, out, BuildSettings(workers=1), progress=False)
    plain = build_shards({"c": str(planted["corpus"])}, tmp_path / "plain", BuildSettings(workers=1), progress=False)
    assert plain["exclusions"] == [] and "exclusions" not in plain["identity"] and plain["num_samples"] == 8


def test_content_hash_ignores_names_and_sees_pixels(planted, tmp_path):
    renamed = tmp_path / "renamed"
    renamed.mkdir()
    for i, rel in enumerate(EVAL):
        shutil.copyfile(planted["eval"] / rel, renamed / f"x{i}.png")
    first = load_exclusion(str(planted["eval"]))
    assert load_exclusion(str(renamed)).content_hash == first.content_hash
    Image.fromarray(np.zeros((40, 40), np.uint8)).save(renamed / "x0.png")
    assert load_exclusion(f"named={renamed}").content_hash != first.content_hash
    assert load_exclusion(f"named={renamed}").name == "named"


def test_inspect_overlap_counts_and_draws_the_pairs(planted, tmp_path, capsys):
    plain = tmp_path / "plain"
    build_shards({"c": str(planted["corpus"])}, plain, BuildSettings(workers=1), progress=False)
    sheet = tmp_path / "ov.png"
    inspect_cli.main([str(plain), "--overlap", str(planted["eval"]), "--overlap-sheet", str(sheet)])
    assert "overlap with eval (3 images): 3 of 8 samples copy 3 of its images" in capsys.readouterr().out
    pairs = [json.loads(line) for line in sheet.with_suffix(".jsonl").read_text().splitlines()]
    assert sorted(p["matched"] for p in pairs) == sorted(EVAL) and Image.open(sheet).size[0] > 200
    other = tmp_path / "other"  # nothing of the corpus in it: an empty list, no sheet of nothing
    other.mkdir()
    Image.fromarray(np.random.default_rng(5).integers(0, 255, (96, 96), dtype=np.uint8)).save(other / "n.png")
    none = tmp_path / "none.png"
    inspect_cli.main([str(plain), "--overlap", str(other), "--overlap-sheet", str(none)])
    out = capsys.readouterr().out
    assert "0 of 8 samples copy 0 of its images" in out and "no matched pairs: no sheet drawn" in out
    assert not none.exists() and none.with_suffix(".jsonl").read_text() == ""


def test_an_overlap_count_over_shards_read_in_part_is_not_called_complete(planted, tmp_path, capsys):
    built = tmp_path / "built"
    build_shards({"c": str(planted["corpus"])}, built, BuildSettings(workers=1, samples_per_shard=3), progress=False)
    manifest = json.loads((built / "manifest.json").read_text())
    copy = tmp_path / "copy"
    shutil.copytree(built, copy)
    first = copy / manifest["shards"][0]
    first.write_bytes(first.read_bytes()[:3000])  # cut short: its later samples are gone
    args = [str(copy), "--overlap", str(planted["eval"]), "--overlap-sheet", str(tmp_path / "ov.png")]
    with pytest.raises(SystemExit) as exc:
        inspect_cli.main(args)
    out, err = capsys.readouterr()
    read = int(out.split(" of ")[1].split()[0])
    missed = manifest["num_samples"] - read
    assert exc.value.code == 2 and 0 < read < manifest["num_samples"]
    gaps = f"{missed} of {manifest['num_samples']} samples not read (1 shard(s) cut short"  # + a corrupt sample
    assert f"incomplete: {gaps}" in out and "the counts above are a lower bound" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith(f"error: --overlap: {gaps}") and last.endswith("; the overlap counts are a lower bound")
    for name in manifest["shards"]:  # nothing readable: no count at all, and no empty contact sheet
        (copy / name).write_bytes(b"\0" * 100)
    for extra, msg in [
        (["--overlap", str(planted["eval"])], f"error: {copy}: no sample could be read, nothing was compared: "),
        (["--sheet", str(tmp_path / "s.png")], f"error: --sheet {tmp_path / 's.png'}: no sample could be read"),
    ]:
        with pytest.raises(SystemExit) as exc:
            inspect_cli.main([str(copy), *extra])
        assert exc.value.code == 2 and capsys.readouterr().err.strip().splitlines()[-1].startswith(msg)


def test_a_splits_file_names_its_test_and_val_images(busi_dir, tmp_path):
    path = tmp_path / "splits.json"
    splits = load_or_make_splits(read_catalog(str(busi_dir), "cls"), path, (0.6, 0.2, 0.2), 0, duplicates=False)
    data = json.loads(path.read_text())
    assert data["root"] == str(busi_dir) and data["images"]["benign/benign (1).png"] == "benign/benign (1).png"
    default = load_exclusion(str(path))
    assert default.name == "busi:test+val" and default.root == busi_dir and default.parts == ("test", "val")
    assert default.images == tuple(sorted(splits.test + splits.val))
    test = load_exclusion(f"{path}:test")
    assert test.images == tuple(sorted(splits.test)) and test.name == "busi:test"
    assert default.record(0)["part_hashes"] == {
        "test": test.content_hash,
        "val": load_exclusion(f"{path}:val").content_hash,
    }
    with pytest.raises(UserError, match="unknown split part 'tset'"):
        load_exclusion(f"{path}:tset")
    hand = tmp_path / "elsewhere" / "hand.json"  # a hand-written file with a relative root: beside the file
    hand.parent.mkdir()
    hand.write_text(json.dumps({**data, "root": os.path.relpath(busi_dir, hand.parent)}))
    assert load_exclusion(str(hand)).root.resolve() == busi_dir.resolve()
    del data["root"]
    (tmp_path / "old.json").write_text(json.dumps(data))
    with pytest.raises(UserError, match="does not name its images' files"):
        load_exclusion(str(tmp_path / "old.json"))
    (tmp_path / "other.json").write_text(json.dumps({"train": [1], "val": [2], "test": [3]}))  # another tool's
    with pytest.raises(UserError) as exc:
        load_exclusion(str(tmp_path / "other.json"))
    assert "other.json is not a splits.json of a downstream run (no 'root' and 'images'" in str(exc.value)


def test_catalogue_exclude_key(planted, tmp_path):
    cat = tmp_path / "corpus.yaml"
    rel = Path("..") / planted["eval"].relative_to(planted["root"].parent)
    cat.write_text(f"exclude: [{rel}]\nsources:\n  - name: c\n    path: {planted['corpus']}\n")
    corpus = load_corpus(cat)
    assert [Path(p).resolve() for p in corpus.exclude] == [planted["eval"].resolve()]
    cat.write_text(f"exclude: 3\nsources:\n  - name: c\n    path: {planted['corpus']}\n")
    with pytest.raises(UserError, match="'exclude' expects a path or a list of paths"):
        load_corpus(cat)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("/nonexistent/splits.json", "--exclude /nonexistent/splits.json: /nonexistent/splits.json is neither"),
        ("{eval}:test", ":test' picks parts of a splits.json, not of a folder"),
    ],
)
def test_build_cli_errors_are_one_line(planted, tmp_path, capsys, spec, message):
    argv = ["--source", f"c={planted['corpus']}", "--out", str(tmp_path / "o"), "--exclude", spec.format(**planted)]
    with pytest.raises(SystemExit) as exc:
        build_cli.main(argv)
    err = capsys.readouterr().err
    assert exc.value.code == 2 and err.count("\n") == 1 and err.startswith("error: ") and message in err


def test_build_in_parts_with_an_exclusion_set_equals_one_process(excluded_build, planted, tmp_path):
    one, manifest = excluded_build
    out, settings = tmp_path / "parts", BuildSettings(workers=1)
    sources, sets = {"c": str(planted["corpus"])}, load_exclusions([str(planted["eval"])])
    for i in range(2):
        build_part(sources, out, settings, Part(i, 2), progress=False, exclusions=sets)
    with pytest.raises(UserError, match=r"exclusion sets differ \(eval -> none\)"):  # the merge needs the same sets
        build_shards(sources, out, settings, progress=False)
    merged = build_shards(sources, out, settings, progress=False, exclusions=sets)
    assert merged["rejected"]["eval_overlap"] == 3 and merged["num_samples"] == manifest["num_samples"]
    assert tree_bytes(out) == tree_bytes(one)


def test_a_folder_of_dicom_images_and_misnamed_files_is_an_exclusion_set_told_by_content(tmp_path):
    """An evaluation set held as DICOM (as some hospital exports are), or as images with another
    extension, excludes its copies too; a text file beside them is no image."""
    from shards.synth.media import write_dicom

    corpus = tmp_path / "corpus"
    write_dicom(corpus, 4, seed=3)  # mono2 .dcm, mono1 16-bit .dcm, RGB .dcm, YBR JPEG without an extension
    evaluation = tmp_path / "eval"
    shutil.copytree(corpus, evaluation)
    (evaluation / "README.txt").write_text("the test images\n")
    s = load_exclusion(str(evaluation))
    assert s.images == tuple(sorted(p.name for p in corpus.iterdir()))  # the four DICOM files, not the text
    (corpus / "other.png").write_bytes(png_bytes(speckle_frame(seed=11)))  # no evaluation image
    m = build_shards(
        {"c": str(corpus)}, tmp_path / "out", BuildSettings(size=64, workers=1), progress=False, exclusions=[s]
    )
    removed = m["exclusions"][0]["frames_removed"]
    assert removed == m["rejected"]["eval_overlap"] == 4 and m["num_samples"] == 1
    with pytest.raises(UserError, match="no images .* under"):
        load_exclusion(str(tmp_path / "out"))  # shards and JSON: nothing to exclude


def test_a_file_named_like_an_image_is_judged_by_content_and_a_broken_one_names_its_set(
    planted, tmp_path, capsys, caplog
):
    evaluation = tmp_path / "eval"
    shutil.copytree(planted["eval"], evaluation)
    (evaluation / "README.png").write_text("notes on the test images\n")
    with caplog.at_level(logging.WARNING, logger="shards.exclusions"):
        assert load_exclusion(str(evaluation)).images == tuple(sorted(EVAL))  # text is no image, whatever its name
    assert "1 file(s) named as images are none by their content and are not in the set, e.g. README.png" in caplog.text
    (evaluation / "gone.png").symlink_to(tmp_path / "nowhere.png")  # a test image that cannot be read: no silence
    with pytest.raises(UserError, match=r"gone.png: cannot read it \(No such file or directory\)"):
        load_exclusion(str(evaluation))
    (evaluation / "gone.png").unlink()
    good = (evaluation / EVAL[0]).read_bytes()
    (evaluation / EVAL[0]).write_bytes(good[: len(good) // 2])  # a PNG signature over half its data
    argv = ["--source", f"c={planted['corpus']}", "--out", str(tmp_path / "o"), "--exclude", f"test={evaluation}"]
    with pytest.raises(SystemExit) as exc:
        build_cli.main(argv)
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
    assert exc.value.code == 2 and len(errors) == 1, errors
    assert errors[0].startswith(
        f"error: evaluation set 'test' (test={evaluation}): {evaluation / EVAL[0]}: cannot read image"
    )


def test_a_splits_file_without_test_images_or_with_odd_paths_is_one_line(tmp_path):
    base = {"train": ["a"], "val": [], "test": [], "root": str(tmp_path), "images": {"a": "a.png"}}
    path = tmp_path / "splits.json"
    path.write_text(json.dumps(base))
    with pytest.raises(UserError, match="holds no test/val images: nothing to exclude"):
        load_exclusion(str(path))
    path.write_text(json.dumps({**base, "test": ["a", "b"], "images": {"a": "a.png", "b": 7}}))
    with pytest.raises(UserError, match="image of id 'b' is 7, expected a file path"):
        load_exclusion(str(path))
    with pytest.raises(UserError, match=r"--corpus .*: is a folder \(expected a catalogue YAML file"):
        load_corpus(tmp_path)
