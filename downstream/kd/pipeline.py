"""Run plumbing shared by the recipes: the run context, resumable training stages, evaluation,
and the teacher -> from-scratch student -> distilled student sequence of the logit-KD papers.

A stage (``OUT/<stage>/model.safetensors`` + ``stage.json``) is reused when the run is started
again with the same stage key (architecture, training settings, seed, data fingerprint, image
size, train/val ids), so an interrupted run resumes at the first unfinished stage instead of
retraining the teacher; any change retrains that stage.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator

from downstream.data import ImageSet
from downstream.data.inputs import Inputs
from downstream.edge.measure import num_params
from downstream.fit import FitConfig, FitResult, fit
from downstream.kd.checkpoint import check_unseen, image_digests, load_model, save_model
from downstream.kd.config import LogitKDConfig, RecipeConfig
from downstream.kd.data import PreparedData
from downstream.kd.losses import LogitKDLoss
from downstream.kd.models.backbones import timm_student
from downstream.kd.recipes.base import RecipeResult, image_deployment
from downstream.kd.tasks import LogitKD, freeze, teacher_logits
from downstream.loaders import make_loader
from downstream.metrics import plot_confusion, plot_confusions
from downstream.tasks import Classification
from sonodistill.atomic import write_json
from sonodistill.config import to_dict
from sonodistill.world import make_accelerator

log = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    """Python, numpy and torch RNGs (every device) from one seed, before building a model."""
    from accelerate.utils import set_seed

    set_seed(seed, deterministic=False)


def stage_seed(seed: int, name: str) -> int:
    """The seed a stage trains from: the run's, and its name's (zlib.crc32: stable across processes)."""
    return (seed * 1_000_003 + zlib.crc32(name.encode())) % 2**31


@dataclass
class Run:
    """Everything a recipe's stages share."""

    out: Path
    acc: Accelerator
    prep: PreparedData
    seed: int
    workers: int
    image_size: int

    @property
    def main(self) -> bool:
        return self.acc.is_main_process

    @functools.cached_property
    def learnt_from(self) -> list[str]:
        """SHA-1s of every image a stage may learn from (all but the test split), hashed once per run:
        each saved stage records them (:func:`downstream.kd.checkpoint.check_unseen`)."""
        learnt = [r for part, recs in self.prep.parts.items() if part != "test" for r in recs]
        return list(image_digests([*learnt, *self.prep.unlabelled]))

    def loader(self, dataset, batch_size: int, shuffle: bool, seed_offset: int = 0):
        return make_loader(dataset, batch_size, train=shuffle, workers=self.workers, seed=self.seed + seed_offset)


def start(cfg: RecipeConfig, data: PreparedData, out: Path) -> Run:
    """The run context of one recipe run on ``data``, its stages kept in ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    acc = make_accelerator(cfg.mixed_precision)
    return Run(out=out, acc=acc, prep=data, seed=cfg.seed, workers=cfg.num_workers, image_size=cfg.image_size)


def trained_seconds(stages: Iterable[StageResult]) -> float:
    """Seconds of the stages this run trained (a reused stage took none)."""
    return sum(s.seconds for s in stages if not s.reused)


def _fingerprint(key: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def teacher_key(checkpoint: str, teacher: StageResult | None) -> dict[str, Any]:
    """What a distilled stage depends on about its teacher: the file it was loaded from, or the
    fingerprint of the stage that trained it (a teacher trained otherwise retrains the students)."""
    if checkpoint:
        st = Path(checkpoint).stat()
        return {"checkpoint": str(Path(checkpoint).resolve()), "size": st.st_size, "mtime": st.st_mtime_ns}
    return {"stage": teacher.fingerprint if teacher is not None else ""}


@dataclass
class StageResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = 0
    seconds: float = 0.0
    reused: bool = False
    fingerprint: str = ""  # what the stage was trained from (the stages trained after it include it)


def stage(
    run: Run,
    name: str,
    model: torch.nn.Module,
    arch: dict[str, Any],
    key: dict[str, Any],
    train: Callable[[], FitResult],
) -> StageResult:
    """Train ``model`` with ``train()`` or reload the finished stage. ``arch`` and ``key`` hold
    everything the stage's weights depend on (its config sections whole, the stages it learnt from).

    Each stage trains from random state of its own (the run's seed and its name): a stage trained
    after earlier ones were reused draws the same augmentations and dropout as in one uninterrupted
    run, whose earlier stages consumed random numbers first."""
    folder = run.out / name
    fp = _fingerprint(
        {
            "arch": arch,
            **key,
            "data": run.prep.catalog.fingerprint(),
            "img_size": run.image_size,  # the key's name predates image_size: kept so finished stages stay valid
            "split": {p: [r.id for r in recs] for p, recs in run.prep.parts.items() if p != "test"},
            "precision": run.acc.mixed_precision,  # bf16 / fp16 weights differ from fp32 ones
            "seeding": "per stage",  # stages trained before each had its own random state are trained again
        }
    )
    meta_path, weights = folder / "stage.json", folder / "model.safetensors"
    if meta_path.is_file() and weights.is_file():
        try:
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
        except ValueError:
            log.warning(f"{meta_path}: unreadable; the {name} stage is trained again")
            meta = {}
        if meta.get("fingerprint") == fp:
            load_model(model, weights, arch=arch, key=f"{name} stage")
            log.info(f"{name}: reusing the finished stage in {folder}")
            return StageResult(meta["history"], meta["best_epoch"], meta["seconds"], reused=True, fingerprint=fp)
    t0 = time.perf_counter()
    seed_everything(stage_seed(run.seed, name))
    res = train()
    seconds = time.perf_counter() - t0  # the whole stage: fit plus what it needs first (e.g. teacher logits)
    if run.main:
        save_model(model, weights, arch=arch, trained_on=run.learnt_from)
        write_json(
            meta_path,
            {
                "fingerprint": fp,
                "history": res.history,
                "best_epoch": res.best_epoch,
                "seconds": seconds,
                "key": key,
            },
        )
    run.acc.wait_for_everyone()
    return StageResult(res.history, res.best_epoch, seconds, fingerprint=fp)


def evaluate(
    run: Run, task: Classification, records, dataset_fn, name: str, batch_size: int = 32, plot: bool = True
) -> tuple[dict, dict[str, np.ndarray]]:
    """Test metrics (downstream.metrics) and raw predictions; confusion-matrix PNG next to them."""
    dl = run.acc.prepare(run.loader(dataset_fn(records), batch_size, shuffle=False))
    task.model = task.model.to(run.acc.device)  # each process predicts its shard; no DDP wrapper needed
    pred = task.predict(dl, run.acc)
    metrics = task.metrics(pred)
    if plot and run.main:
        plot_confusion(metrics["confusion_matrix"], run.prep.classes, run.out / f"confusion_{name}.png", title=name)
    return metrics, pred


def evaluate_many(
    run: Run, tasks: dict[str, Classification], records, dataset_fn, batch_size: int = 32, plot: bool = True
) -> tuple[dict[str, dict], dict[str, dict[str, np.ndarray]]]:
    """:func:`evaluate` of several models in one pass over the test split (decoded once); their
    confusion matrices side by side in ``confusion.png``."""
    from downstream.tasks.classification import predict_many

    dl = run.acc.prepare(run.loader(dataset_fn(records), batch_size, shuffle=False))
    for task in tasks.values():
        task.model = task.model.to(run.acc.device)
    preds = predict_many(tasks, dl, run.acc)
    metrics = {name: tasks[name].metrics(p) for name, p in preds.items()}
    if plot and run.main:
        cms = {name: m["confusion_matrix"] for name, m in metrics.items()}
        plot_confusions(cms, run.prep.classes, run.out / "confusion.png")
    return metrics, preds


@dataclass
class LogitKDSpec:
    """What a logit-KD recipe plugs into :func:`logit_kd`."""

    build_teacher: Callable[[int], torch.nn.Module]
    teacher_arch: dict[str, Any]
    teacher_checkpoint: str
    teacher_train: FitConfig
    build_student: Callable[[int], torch.nn.Module]
    student_arch: dict[str, Any]
    student_train: FitConfig
    loss: LogitKDLoss
    inputs: Inputs
    teacher_config: dict[str, Any] = field(default_factory=dict)  # the sections whole, in the stages' keys
    student_config: dict[str, Any] = field(default_factory=dict)


@dataclass
class LogitKDResult:
    models: dict[str, torch.nn.Module]
    stages: dict[str, StageResult]
    metrics: dict[str, dict]
    predictions: dict[str, dict[str, np.ndarray]]
    inputs: Inputs


def _fitter(run: Run, train_set, val_set) -> Callable[[Any, FitConfig, str], Callable[[], FitResult]]:
    """``fit_with(task, cfg, name)``: a stage's training on ``train_set``, selected on ``val_set``."""

    def fit_with(task, cfg: FitConfig, name: str):
        def go():
            return fit(
                task,
                run.loader(train_set, cfg.batch_size, True),
                run.loader(val_set, cfg.batch_size, False) if val_set is not None else None,
                cfg,
                run.acc,
                name=name,
                log_dir=run.out / "tb",
            )

        return go

    return fit_with


def _logit_teacher(run: Run, spec: LogitKDSpec, fit_with, stages: dict[str, StageResult]) -> torch.nn.Module:
    """The teacher trained (or loaded from ``teacher_checkpoint``), frozen on the device."""
    seed_everything(run.seed)
    teacher = spec.build_teacher(len(run.prep.classes))
    if spec.teacher_checkpoint:
        load_model(teacher, spec.teacher_checkpoint, arch=spec.teacher_arch, key="teacher.checkpoint")
        check_unseen(spec.teacher_checkpoint, run.prep.parts["test"])  # the right architecture first
        stages["teacher"] = StageResult(reused=True)
    else:
        stages["teacher"] = stage(
            run,
            "teacher",
            teacher,
            spec.teacher_arch,
            {"train": to_dict(spec.teacher_train), "seed": run.seed, "config": spec.teacher_config},
            fit_with(Classification(teacher, spec.inputs, run.prep.classes), spec.teacher_train, "teacher"),
        )
    return freeze(teacher.to(run.acc.device))


def logit_kd(run: Run, spec: LogitKDSpec, size: int) -> LogitKDResult:
    """Teacher (trained, or loaded from ``teacher_checkpoint``), scratch student, distilled student."""
    names = run.prep.classes
    dataset = lambda recs: ImageSet(recs, size, labels=True)  # noqa: E731
    train_set = dataset(run.prep.parts["train"])
    fit_with = _fitter(run, train_set, dataset(run.prep.parts["val"]) if run.prep.parts["val"] else None)
    stages: dict[str, StageResult] = {}
    teacher = _logit_teacher(run, spec, fit_with, stages)
    teacher_task = Classification(teacher, spec.inputs, names)

    seed_everything(run.seed + 1)
    scratch = spec.build_student(len(names))
    init = {k: v.clone() for k, v in scratch.state_dict().items()}
    s_key = {"train": to_dict(spec.student_train), "seed": run.seed, "config": spec.student_config}
    scratch_task = Classification(scratch, spec.inputs, names)
    stages["scratch"] = stage(
        run, "scratch", scratch, spec.student_arch, s_key, fit_with(scratch_task, spec.student_train, "scratch")
    )
    distilled = spec.build_student(len(names))
    distilled.load_state_dict(init)  # same initialisation as the baseline: only the loss differs

    def distil():
        cache = None
        if not spec.inputs.augments:  # every epoch sees the same inputs: run the teacher once
            loader = run.loader(train_set, spec.student_train.batch_size, False)
            cache = teacher_logits(teacher_task, loader, run.acc.device, len(train_set), run.acc.autocast)
        task = LogitKD(distilled, spec.inputs, names, teacher, spec.loss, cache=cache)
        return fit_with(task, spec.student_train, "distilled")()

    key = {
        **s_key,
        "ce_weight": spec.loss.ce_weight,
        "kd_weight": spec.loss.kd_weight,
        "T": spec.loss.temperature,
        "teacher": teacher_key(spec.teacher_checkpoint, stages["teacher"]),
    }
    stages["distilled"] = stage(run, "distilled", distilled, spec.student_arch, key, distil)

    models = {"teacher": teacher, "scratch": scratch, "distilled": distilled}
    tasks = {name: Classification(m, spec.inputs, names) for name, m in models.items()}
    metrics, preds = evaluate_many(run, tasks, run.prep.parts["test"], dataset)
    for name, m in models.items():
        metrics[name]["params"] = num_params(m)
        metrics[name]["best_epoch"] = stages[name].best_epoch
    return LogitKDResult(models, stages, metrics, preds, spec.inputs)


def logit_kd_result(name: str, cfg: RecipeConfig, run: Run, res: LogitKDResult) -> RecipeResult:
    """A logit-KD recipe's run: the distilled student deployed, teacher and scratch baseline beside it."""
    metrics = {
        "recipe": name,
        "data": run.prep.source,
        "classes": run.prep.classes,
        "splits": {k: len(v) for k, v in run.prep.parts.items()},
        "models": res.metrics,
        "history": {k: v.history for k, v in res.stages.items()},
        "config": to_dict(cfg),
    }
    return RecipeResult(
        metrics,
        res.metrics["distilled"],
        image_deployment(res.models["distilled"], run.image_size, "cls"),
        teacher=res.metrics["teacher"],
        scratch=res.metrics["scratch"],
        models=res.models,
        train_seconds=trained_seconds(res.stages.values()),
    )


def timm_student_run(
    name: str,
    cfg: LogitKDConfig,
    data: PreparedData,
    out: Path,
    build_teacher: Callable[[int], torch.nn.Module],
    teacher_arch: dict[str, Any],
) -> RecipeResult:
    """One run of a logit-KD recipe whose student is a timm classifier: teacher, scratch and distilled
    student on ``data``, ImageNet-normalised input without augmentation."""
    r = start(cfg, data, out)
    spec = LogitKDSpec(
        build_teacher=build_teacher,
        teacher_arch=teacher_arch,
        teacher_checkpoint=cfg.teacher.checkpoint,
        teacher_train=cfg.teacher.train,
        build_student=lambda c: timm_student(cfg.student, c),
        student_arch={"model": cfg.student.model, "num_classes": len(data.classes), "kwargs": cfg.student.kwargs},
        student_train=cfg.student.train,
        loss=LogitKDLoss.from_config(cfg.loss),
        inputs=Inputs(channels_last=torch.cuda.is_available()),
        teacher_config=to_dict(cfg.teacher),
        student_config=to_dict(cfg.student),
    )
    return logit_kd_result(name, cfg, r, logit_kd(r, spec, cfg.image_size))
