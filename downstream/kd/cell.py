"""A KD recipe as a row of the limited-label sweep: ``methods=[kd:vit_mobilenet,kd:hdkd?model.channels=[64,128,192]]``.

A KD cell trains on exactly what the encoder cells of the same task / label fraction / seed
train on: :func:`downstream.runner.prepare` makes (or reuses) the sweep's ``splits.json`` and the
nested label subset, written to the cell's ``subset.json``, and the recipe reads both
(``data.split.file``, ``data.subset``). It reports the test metrics of the recipe's evaluated
student, keeps the teacher's and the from-scratch student's, and records the edge column of the
student (ONNX fp32 / static INT8 included).

The recipe's config is layered: its paper preset, then the sweep's ``kd_presets`` (e.g. ``tiny``
-> ``downstream/kd/configs/tiny_<recipe>.yaml`` where it exists: tiny teacher widths), then the
sweep's ``run:`` settings (image size, epochs and batch size of every training stage, loader
workers, mixed precision, seed, split, reader), then the recipe's one-run-per-cell settings
(:class:`~downstream.kd.recipes.base.CellSpec`), then the method's own ``?key=value&...``
overrides, which win. ``@NAME`` in an override value names a sweep encoder by its row name
(``kd:seg_unet?teacher.encoder=@R50-Distill-US``); ``seg_unet``'s teacher defaults to the sweep's
first distilled encoder (an export folder or ``hf-hub:`` spec).

A recipe that cannot run on a task (a classification recipe on a segmentation task, CSA-MoE
without lesion masks) gives an ``n/a`` cell with the reason instead of a row that silently
disappears.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from downstream.config import TASK_KIND, TASK_LAYOUT, RunConfig
from downstream.data import ImageSet
from downstream.edge.profile import LatencyCache, profile
from downstream.edge.score import classification_deployment, segmentation_deployment
from downstream.encoders import deployable_spec
from downstream.fit import FitConfig
from downstream.loaders import make_loader
from sonodistill.config import split_top_level, to_dict
from sonodistill.errors import UserError

KIND_NAME = {"cls": "classification", "seg": "segmentation"}


@dataclass(frozen=True)
class Method:
    """One ``methods`` entry: ``[NAME=]kd:RECIPE[?key=value&key=value]``."""

    name: str
    recipe: str
    overrides: tuple[str, ...]
    text: str


def parse_method(item: str) -> Method:
    from downstream.kd.recipes import RECIPES

    item = item.strip()
    name, body = "", item
    if not item.startswith("kd:"):
        name, sep, body = item.partition("=")
        if not sep or not body.strip().startswith("kd:") or not name.strip():
            raise UserError(f"methods: '{item}' is not kd:RECIPE[?key=value&...] or NAME=kd:RECIPE[?...]")
    head, _, query = body.strip().partition("?")
    recipe = head[3:]
    if recipe not in RECIPES:
        raise UserError(f"methods: unknown KD recipe '{recipe}' in '{item}'; valid: {', '.join(RECIPES)}")
    overrides = tuple(split_top_level(query, "&")) if query else ()
    bad = [o for o in overrides if "=" not in o]
    if bad:
        raise UserError(f"methods: override '{bad[0]}' in '{item}' is not key=value")
    return Method(name.strip() or head, recipe, overrides, item)


def recipe_module(method: Method):
    from downstream.kd.recipes import RECIPES

    return RECIPES[method.recipe]


def _fit_paths(cfg: Any, prefix: str = "") -> list[str]:
    """Dotted paths of every training stage (:class:`FitConfig`) in a recipe config."""
    out = []
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, FitConfig):
            out.append(prefix + f.name)
        elif dataclasses.is_dataclass(v):
            out.extend(_fit_paths(v, prefix + f.name + "."))
    return out


def _value(v: Any) -> str:
    return json.dumps(v) if isinstance(v, (list, tuple, dict, bool)) else str(v)


def run_overrides(module: Any, rc: RunConfig, subset: str) -> list[str]:
    """The sweep's ``run:`` settings and the cell's data identity as recipe overrides."""
    reader = rc.reader
    if rc.task in TASK_LAYOUT and reader.layout == "auto":
        reader = dataclasses.replace(reader, layout=TASK_LAYOUT[rc.task])
    out = [
        f"data.img_size={rc.image_size}",
        f"data.workers={rc.num_workers}",
        f"data.split.file={rc.split.file}",
        f"data.split.ratios={_value(list(rc.split.ratios))}",
        f"data.split.seed={rc.split.seed}",
        f"data.subset={subset}",
        f"mixed_precision={rc.mixed_precision}",
        f"seed={rc.seed}",
    ]
    out += [f"data.reader.{k}={_value(v)}" for k, v in to_dict(reader).items()]
    for path in _fit_paths(module.Config()):
        out += [f"{path}.epochs={rc.train.epochs}", f"{path}.batch_size={rc.train.batch_size}"]
    return out


def preset_files(module: Any, presets: list[str]) -> list[Path]:
    """``kd_presets`` entries: a YAML path, or NAME -> ``downstream/kd/configs/NAME_<recipe>.yaml`` if it exists."""
    from downstream.kd.recipes.base import CONFIGS

    files = []
    for p in presets:
        if p.endswith((".yaml", ".yml")):
            if not Path(p).is_file():
                raise UserError(f"kd_presets: {p} not found")
            files.append(Path(p))
        elif (CONFIGS / f"{p}_{module.NAME}.yaml").is_file():
            files.append(CONFIGS / f"{p}_{module.NAME}.yaml")
    return files


def method_overrides(method: Method, encoders: dict[str, str]) -> list[str]:
    """The method's overrides with ``@NAME`` resolved to that sweep encoder's spec; seg_unet's
    teacher defaults to the sweep's first distilled encoder."""
    out = []
    for o in method.overrides:
        key, _, value = o.partition("=")
        if value.startswith("@"):
            if value[1:] not in encoders:
                raise UserError(
                    f"methods: '{o}' in '{method.text}' names no sweep encoder; encoders: {', '.join(encoders)}"
                )
            value = encoders[value[1:]]
        out.append(f"{key.strip()}={value}")
    module = recipe_module(method)
    if hasattr(module.Config(), "teacher") and hasattr(module.Config().teacher, "encoder"):
        given = any(o.split("=", 1)[0] == "teacher.encoder" for o in out)
        if module.CELL.kind == "seg" and not given:
            distilled = [spec for spec in encoders.values() if deployable_spec(spec)]
            if not distilled:
                raise UserError(
                    f"methods: {method.text} needs teacher.encoder=SPEC (or @NAME of a sweep encoder): "
                    "the sweep has no distilled encoder (export folder or hf-hub:) to default to"
                )
            out.insert(0, f"teacher.encoder={distilled[0]}")
    return out


def kd_config(method: Method, rc: RunConfig, presets: list[str], encoders: dict[str, str]) -> Any:
    """The resolved recipe config of one KD cell (see the module docstring for the layering)."""
    from downstream.kd.recipes.base import recipe_config

    module = recipe_module(method)
    subset = str(Path(rc.out) / "subset.json")
    overrides = [*run_overrides(module, rc, subset), *module.CELL.overrides, *method_overrides(method, encoders)]
    return recipe_config(module, preset_files(module, presets), overrides)


def config_digest_dict(cfg: Any) -> dict:
    """The recipe config without output locations (moving OUT keeps a sweep resumable)."""
    d = to_dict(cfg)
    d["data"]["split"].pop("file", None)
    d["data"].pop("subset", None)
    return d


def not_applicable(method: Method, kind: str, task_label: str) -> str | None:
    """Why a recipe cannot run on a task of this kind (``None``: it can, as far as the kind goes)."""
    own = recipe_module(method).CELL.kind
    if own != kind:
        return f"{KIND_NAME[own]} recipe; {task_label} is a {KIND_NAME[kind]} task"
    return None


def _stage_seconds(out: Path, since: float) -> float:
    """Training seconds of the stages this run trained (their stage.json written after ``since``)."""
    total = 0.0
    for meta in out.rglob("stage.json"):
        if meta.stat().st_mtime >= since:
            total += float(json.loads(meta.read_text()).get("seconds", 0.0))
    return total


def _numbers(m: dict | None) -> dict | None:
    """A model's test metrics without per-image / per-sample arrays (kept in the recipe's metrics.json)."""
    if m is None:
        return None
    return {k: v for k, v in m.items() if k not in ("per_image", "runs")}


def run_kd_cell(
    rc: RunConfig,
    method: Method,
    cfg: Any,
    *,
    task_label: str,
    latency: LatencyCache | None = None,
) -> dict:
    """Train one KD cell (resumable: the recipe reuses finished stages) and return its metrics."""
    from downstream.kd.data import prepare as kd_prepare
    from downstream.runner import prepare
    from sonodistill.atomic import write_json
    from sonodistill.config import save_config

    t0 = time.perf_counter()
    wall0 = time.time()
    kind = TASK_KIND[rc.task]
    out = Path(rc.out)
    catalog, splits, train_ids = prepare(rc)  # the sweep's splits and the encoder cells' label subset
    save_config(cfg, out / "config.yaml")
    write_json(out / "subset.json", {"fraction": rc.fraction, "seed": rc.seed, "train": train_ids})
    module = recipe_module(method)
    spec = module.CELL
    base = {
        "task": rc.task,
        "data": rc.data,
        "dataset": catalog.name,
        "encoder": method.text,
        "method": method.recipe,
        "mode": rc.mode,
        "fraction": rc.fraction,
        "seed": rc.seed,
        "n_train": len(train_ids),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
    }
    reason = not_applicable(method, kind, task_label) or (spec.applies(catalog, cfg) if spec.applies else None)
    if reason:
        metrics = {**base, "na": f"{method.recipe}: {reason}", "time_s": round(time.perf_counter() - t0, 2)}
        write_json(out / "metrics.json", metrics)
        return metrics
    t_prep = time.perf_counter() - t0
    recipe_metrics = module.run(cfg, rc.data, out)
    t_recipe = time.perf_counter() - t0 - t_prep
    roles = spec.extract(recipe_metrics, cfg)
    prep = kd_prepare(rc.data, cfg.data, out, kind=kind)
    model, stage_dir = spec.deployed(cfg, max(1, len(prep.classes)))
    _load_deployed(model, out / stage_dir / "model.safetensors", spec.state_prefix)
    t1 = time.perf_counter()
    edge = None
    if rc.edge.enabled:
        edge = _edge(model, spec, cfg, prep, rc, kind, latency, out)
    t_edge = time.perf_counter() - t1
    student = roles["student"]
    train_s = _stage_seconds(out, wall0)
    total = time.perf_counter() - t0
    metrics = {
        **base,
        "classes": prep.classes,
        "n_train": len(prep.parts["train"]),
        "params_m": round(sum(p.numel() for p in model.parameters()) / 1e6, 3),
        "best_epoch": student.get("best_epoch", 0),
        "val": {},
        "test": _numbers(student),
        "teacher": _numbers(roles["teacher"]),
        "scratch": _numbers(roles["scratch"]),
        "time_s": round(total, 2),
        "timing": {
            "prepare_s": round(t_prep, 2),
            "recipe_s": round(t_recipe, 2),
            "train_s": round(train_s, 2),
            "edge_s": round(t_edge, 2),
            "shared_s": round(total - train_s, 2),  # data, splits, evaluation, reports, latency
        },
    }
    if edge is not None:
        metrics["edge"] = edge
    write_json(out / "cell_metrics.json", metrics)  # the recipe's own metrics.json stays as it wrote it
    return metrics


def _load_deployed(model: torch.nn.Module, path: Path, prefix: str) -> None:
    from safetensors.torch import load_file

    state = load_file(str(path))
    if prefix:
        state = {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}
    model.load_state_dict(state)
    model.eval()


def _edge(model, spec, cfg, prep, rc: RunConfig, kind: str, latency, out: Path) -> dict:
    """The edge column of the deployed student, scored on the cell's test split."""
    from downstream.data.inputs import Inputs
    from downstream.kd.data import ViewSet

    size = cfg.data.img_size
    if spec.views:
        dataset = lambda recs: ViewSet(recs, size, cfg.model.erode_dilate)  # noqa: E731
        key = "views"
    else:
        dataset = lambda recs: ImageSet(recs, size, masks=kind == "seg", labels=kind == "cls")  # noqa: E731
        key = "image"
    inputs = Inputs()
    prepare = spec.prepare(cfg) if spec.prepare else (lambda g: inputs(g, train=False))
    bs = rc.train.eval_batch_size
    test = make_loader(dataset(prep.parts["test"]), bs, train=False)
    calib = make_loader(dataset(prep.parts["train"]), bs, train=False)
    if kind == "seg":
        deployment = segmentation_deployment(test, calib, prepare)
    else:
        deployment = classification_deployment(test, calib, prepare, key)
    sample = next(iter(make_loader(dataset(prep.parts["test"][:1]), 1, train=False)))[key]
    example = prepare(sample)
    return profile(model, example, rc.edge, deployable=True, deployment=deployment, cache=latency, workdir=out)
