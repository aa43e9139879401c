"""A KD recipe as a row of the limited-label sweep: ``methods=[kd:vit_mobilenet,kd:hdkd?model.channels=[64,128,192]]``.

A KD cell trains on exactly what the encoder cells of the same task / label fraction / seed
train on: :func:`downstream.runner.prepare` reads the data once and makes (or reuses) the sweep's
``splits.json`` and the nested label subset, and the recipe gets them in memory
(:func:`downstream.kd.data.from_splits`). The cell runs the recipe once
(:meth:`~downstream.kd.recipes.base.Recipe.run`), reports the test metrics of the model it deploys,
keeps the teacher's and the from-scratch student's, and records the edge column of the deployed
model (ONNX fp32 / static INT8 included), which the recipe returns in memory.

``methods`` entries are parsed once (:func:`parse_methods`) into :class:`Method` values. A cell's
recipe config is layered: the recipe's paper preset, then the sweep's ``kd_presets`` (e.g. ``tiny``
-> ``downstream/kd/configs/tiny_<recipe>.yaml`` where it exists: tiny teachers), then the sweep's
``run:`` settings (image size, epochs and batch size of every training stage, loader workers,
mixed precision, seed, split, reader), then the method's own ``?key=value&...`` settings, which
win. ``@NAME`` in a value names a sweep encoder by its row name
(``kd:seg_unet?teacher.encoder=@R50-Distill-US``); ``seg_unet``'s teacher defaults to the sweep's
first distilled encoder (an export folder or ``hf-hub:`` spec).

A recipe that cannot run on a task (a classification recipe on a segmentation task, CSA-MoE
without lesion masks) gives an ``n/a`` cell with the reason instead of a row that silently
disappears.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState

from downstream.config import SPEED_ONLY, TASK_KIND, RunConfig
from downstream.data.read import ReaderConfig
from downstream.edge.profile import LatencyCache, profile
from downstream.edge.score import classification_deployment, segmentation_deployment
from downstream.encoders import deployable_spec
from downstream.fit import FitConfig
from downstream.kd.config import check_recipe
from downstream.kd.data import PreparedData
from downstream.kd.recipes.base import Recipe, RecipeResult, check_teacher_keys, preset, recipe_part
from downstream.loaders import make_loader
from sonodistill.config import (
    load_config,
    override_config,
    rename_key,
    split_top_level,
    to_dict,
    valid_keys,
    with_old_names,
)
from sonodistill.errors import UserError
from sonodistill.logs import is_main_rank

KIND_NAME = {"cls": "classification", "seg": "segmentation"}


@dataclass(frozen=True)
class Method:
    """One ``methods`` entry, parsed: ``[NAME=]kd:RECIPE[?key=value&key=value]``."""

    name: str  # the row's name (``kd:RECIPE`` unless named)
    recipe: Recipe
    overrides: tuple[str, ...]  # the recipe's own settings: checked, current key names, @NAME resolved
    text: str  # as written (part of the cell key)


def parse_method(item: str, encoders: dict[str, str] | None = None) -> Method:
    """One ``methods`` entry against the sweep's ``encoders`` (row name -> spec)."""
    from downstream.kd.registry import recipe

    item = item.strip()
    name, body = "", item
    if not item.startswith("kd:"):
        name, sep, body = item.partition("=")
        if not sep or not body.strip().startswith("kd:") or not name.strip():
            raise UserError(f"methods: '{item}' is not kd:RECIPE[?key=value&...] or NAME=kd:RECIPE[?...]")
    head, _, query = body.strip().partition("?")
    r = recipe(head[3:], where=f"methods: '{item}'")
    given = tuple(split_top_level(query, "&")) if query else ()
    bad = [o for o in given if "=" not in o]
    if bad:
        raise UserError(f"methods: override '{bad[0]}' in '{item}' is not key=value")
    overrides = _resolve(r, item, given, encoders or {})
    _refuse_reproduction_keys(r, item, overrides)
    try:  # checked now against the recipe's own keys (a paper reproduction's settings do not apply to a cell)
        check_teacher_keys(r, overrides)
        check_recipe(override_config(r.config(), overrides))
    except UserError as exc:
        raise UserError(f"methods: '{item}': {exc}") from None
    return Method(name.strip() or head, r, overrides, item)


def _refuse_reproduction_keys(r: Recipe, item: str, overrides: Sequence[str]) -> None:
    """A key only the paper reproduction has (HDKD's data-size sweep, CSA-MoE's repeats) named as
    what it is, rather than as an unknown key followed by the recipe's hundred valid ones."""
    from downstream.kd.registry import reproduction

    own = set(valid_keys(r.config))
    paper = set(valid_keys(reproduction(r.name).config))
    for o in overrides:
        key = o.split("=", 1)[0]
        if key not in own and key in paper:
            raise UserError(
                f"methods: '{item}': {key} is a setting of the paper reproduction "
                f"(python -m downstream.kd train --recipe {r.name}), not of a sweep cell"
            )


def _resolve(r: Recipe, item: str, given: Sequence[str], encoders: dict[str, str]) -> tuple[str, ...]:
    """Current key names, ``@NAME`` -> that sweep encoder's spec; a sweep teacher's default encoder first."""
    out, named = [], {}
    for o in given:
        key, _, value = o.partition("=")
        if value.startswith("@"):
            if value[1:] not in encoders:
                raise UserError(f"methods: '{o}' in '{item}' names no sweep encoder; encoders: {', '.join(encoders)}")
            value = encoders[value[1:]]
        current = rename_key(r.config, key.strip(), f"methods: {item}")
        if named.setdefault(current, key.strip()) != key.strip():  # as on the command line: one name per key
            raise UserError(f"methods: '{item}': both '{named[current]}' and '{key.strip()}' set '{current}'")
        out.append(f"{current}={value}")
    if r.sweep_teacher and not any(o.split("=", 1)[0] == "teacher.encoder" for o in out):
        distilled = [spec for spec in encoders.values() if deployable_spec(spec)]
        if not distilled:
            raise UserError(
                f"methods: {item} needs teacher.encoder=SPEC (or @NAME of a sweep encoder): "
                "the sweep has no distilled encoder (export folder or hf-hub:) to default to"
            )
        out.insert(0, f"teacher.encoder={distilled[0]}")
    return tuple(out)


def parse_methods(items: Sequence[str], encoders: dict[str, str]) -> list[Method]:
    """Every ``methods`` entry, parsed once for the whole sweep."""
    return [parse_method(item, encoders) for item in items]


def _fit_configs(cfg: Any) -> Iterator[FitConfig]:
    """Every training stage (:class:`FitConfig`) in a recipe config."""
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, FitConfig):
            yield v
        elif dataclasses.is_dataclass(v):
            yield from _fit_configs(v)


def apply_run_settings(cfg: Any, rc: RunConfig, reader: ReaderConfig) -> None:
    """The sweep's ``run:`` settings and the cell's data identity on a recipe config, in place."""
    cfg.image_size, cfg.num_workers = rc.image_size, rc.num_workers
    cfg.mixed_precision, cfg.seed = rc.mixed_precision, rc.seed
    cfg.split, cfg.reader, cfg.subset = copy.deepcopy(rc.split), copy.deepcopy(reader), ""
    for stage in _fit_configs(cfg):
        stage.epochs, stage.batch_size = rc.train.epochs, rc.train.batch_size


def preset_files(name: str, presets: list[str]) -> list[Path]:
    """``kd_presets`` entries: a YAML path, or NAME -> ``downstream/kd/configs/NAME_<recipe>.yaml`` if it exists."""
    from downstream.kd.recipes.base import CONFIGS

    files = []
    for p in presets:
        if p.endswith((".yaml", ".yml")):
            if not Path(p).is_file():
                raise UserError(f"kd_presets: {p} not found")
            files.append(Path(p))
        elif (CONFIGS / f"{p}_{name}.yaml").is_file():
            files.append(CONFIGS / f"{p}_{name}.yaml")
    return files


@dataclass
class KDCellConfig:
    """A KD cell's resolved recipe config and the digest of it its cell key holds."""

    config: Any  # the recipe's own config (recipe.config)
    digest: dict[str, Any]  # of every setting (cell keys made before speed-only settings left them)
    speed_free_digest: dict[str, Any]  # without num_workers: what a cell key holds now


def kd_config(method: Method, rc: RunConfig, presets: list[str], reader: ReaderConfig) -> KDCellConfig:
    """The resolved recipe config of one KD cell (see the module docstring for the layering).

    The presets may hold a paper reproduction's own settings (a tiny data-size sweep, repeats): they
    are loaded into the reproduction's config, which is digested as a single run (what cell keys hashed
    before the reproductions moved out of the recipes), and the cell runs the recipe's part of it."""
    from downstream.kd.registry import reproduction

    name = method.recipe.name
    paper = reproduction(name)
    cfg = load_config(paper.config, [preset(name), *preset_files(name, presets)])
    apply_run_settings(cfg, rc, reader)
    cfg = override_config(cfg, method.overrides, where=f"methods: {method.text}")
    single = paper.single_run(cfg)
    return KDCellConfig(
        recipe_part(method.recipe, cfg), config_digest_dict(single), config_digest_dict(single, SPEED_ONLY)
    )


def config_digest_dict(cfg: Any, without: Sequence[str] = ()) -> dict:
    """The recipe config without output locations (moving OUT keeps a sweep resumable) and the
    top-level keys ``without``, under the key names cell keys were made with (renamed keys hash
    under their old names)."""
    tree = to_dict(cfg)
    for key in without:
        tree.pop(key)
    d = with_old_names(type(cfg), tree)
    d["data"]["split"].pop("file", None)
    d["data"].pop("subset", None)
    return d


def teacher_encoder(kd: KDCellConfig | None) -> str | None:
    """The downstream encoder a KD cell's teacher is built from (``teacher.encoder``), if any: the
    encoder whose pretraining corpus must have left the task's test split out. A recipe's own
    teacher and student start from the weights their paper names (ImageNet), not from ultrasound."""
    teacher = getattr(kd.config, "teacher", None) if kd is not None else None
    return getattr(teacher, "encoder", "") or None


def teacher_checkpoint(kd: KDCellConfig | None) -> str | None:
    """The trained teacher a KD cell loads instead of training one (``teacher.checkpoint``), if any."""
    teacher = getattr(kd.config, "teacher", None) if kd is not None else None
    return getattr(teacher, "checkpoint", "") or None


def not_applicable(method: Method, kind: str, task_label: str) -> str | None:
    """Why a recipe cannot run on a task of this kind (``None``: it can, as far as the kind goes)."""
    own = method.recipe.kind
    if own != kind:
        return f"{KIND_NAME[own]} recipe; {task_label} is a {KIND_NAME[kind]} task"
    return None


def _numbers(m: dict | None) -> dict | None:
    """A model's test metrics without per-image / per-sample arrays (kept in the recipe's metrics.json)."""
    if m is None:
        return None
    return {k: v for k, v in m.items() if k not in ("per_image", "runs")}


def run_kd_cell(
    rc: RunConfig,
    method: Method,
    kd: KDCellConfig | None,
    *,
    task_label: str,
    latency: LatencyCache | None = None,
) -> dict:
    """Train one KD cell (resumable: the recipe reuses finished stages) and return its metrics
    (``kd`` is ``None`` for a cell whose task kind the recipe does not train: an ``n/a`` cell)."""
    from downstream.kd.data import from_splits
    from downstream.kd.papers.base import write_run
    from downstream.runner import encoder_check, prepare
    from sonodistill.atomic import write_json

    t0 = time.perf_counter()
    kind, out, r, cfg = TASK_KIND[rc.task], Path(rc.out), method.recipe, kd.config if kd else None
    main = is_main_rank()  # several processes train a cell together; the first writes and times it
    catalog, splits, train_ids = prepare(rc)  # the one read: the sweep's splits and the encoder cells' subset
    if main:
        write_json(out / "subset.json", {"fraction": rc.fraction, "seed": rc.seed, "train": train_ids})
    base = {
        "task": rc.task,
        "data": rc.data,
        "dataset": catalog.name,
        "encoder": method.text,
        "method": r.name,
        "mode": rc.mode,
        "fraction": rc.fraction,
        "seed": rc.seed,
        "n_train": len(train_ids),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
    }
    reason = not_applicable(method, kind, task_label) or r.applies(catalog, cfg)
    if reason:
        metrics = {**base, "na": f"{r.name}: {reason}", "time_s": round(time.perf_counter() - t0, 2)}
        return _kept(out / "metrics.json", metrics, cfg, main)
    spec = teacher_encoder(kd)
    check = encoder_check(spec, rc.task, rc.strict_decontamination, catalog, splits) if spec else None
    data = from_splits(rc.data, catalog, splits, cfg.classes, train_ids, need_masks=r.needs_masks, recipe=r.name)
    t_prep = time.perf_counter() - t0
    result = r.run(cfg, data, out)
    write_run(r, result, out)
    t_recipe = time.perf_counter() - t0 - t_prep
    model = deployable(result.deployed.model)
    t1 = time.perf_counter()
    edge = _edge(model, result, data, rc, kind, latency, out) if rc.edge.enabled and main else None
    PartialState().wait_for_everyone()  # the next cell's work waits: nothing runs beside the latency timing
    t_edge = time.perf_counter() - t1
    total = time.perf_counter() - t0
    metrics = {
        **base,
        "classes": data.classes,
        "n_train": len(data.parts["train"]),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "best_epoch": result.student.get("best_epoch", 0),
        "val": {},
        "test": _numbers(result.student),
        "teacher": _numbers(result.teacher),
        "scratch": _numbers(result.scratch),
        "time_s": round(total, 2),
        "timing": {
            "prepare_s": round(t_prep, 2),
            "recipe_s": round(t_recipe, 2),
            "train_s": round(result.train_seconds, 2),
            "edge_s": round(t_edge, 2),
            "shared_s": round(total - result.train_seconds, 2),  # data, splits, evaluation, reports, latency
        },
    }
    if check is not None:
        metrics["decontamination"] = check.record()
    if edge is not None:
        metrics["edge"] = edge
    return _kept(out / "cell_metrics.json", metrics, cfg, main)  # metrics.json is the recipe run's own


def _kept(path: Path, metrics: dict, cfg: Any, main: bool) -> dict:
    """``metrics`` written to ``path`` with the config they came from beside them (the first process)."""
    from sonodistill.atomic import write_json
    from sonodistill.config import save_config

    if main:
        write_json(path, metrics)
        if cfg is not None:
            save_config(cfg, path.parent / "config.yaml")
    return metrics


def deployable(model: torch.nn.Module) -> torch.nn.Module:
    """The trained model as deployed: no DDP or mixed-precision wrapper, fp32, contiguous, on the CPU, eval."""
    from accelerate.utils import extract_model_from_parallel

    model = extract_model_from_parallel(model, keep_fp32_wrapper=False)
    return model.to("cpu", torch.float32, memory_format=torch.contiguous_format).eval()


def _edge(model, result: RecipeResult, data: PreparedData, rc: RunConfig, kind: str, latency, out: Path) -> dict:
    """The edge column of the deployed model, scored on the cell's test split."""
    d = result.deployed
    bs = rc.train.eval_batch_size
    test = make_loader(d.dataset(data.parts["test"]), bs, train=False)
    calib = make_loader(d.dataset(data.parts["train"]), bs, train=False)
    if kind == "seg":
        deployment = segmentation_deployment(test, calib, d.prepare)
    else:
        deployment = classification_deployment(test, calib, d.prepare, d.key)
    sample = next(iter(make_loader(d.dataset(data.parts["test"][:1]), 1, train=False)))[d.key]
    example = d.prepare(sample)
    return profile(model, example, rc.edge, deployable=True, deployment=deployment, cache=latency, workdir=out)
