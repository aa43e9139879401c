"""One downstream run: data -> split -> label subset -> encoder -> train/probe -> test metrics.

Writes into ``cfg.out``: ``config.yaml`` (resolved), ``subset.json`` (the training ids used),
``metrics.json``, ``best.safetensors`` (unless ``train.save_checkpoint=false``), ``curves.png``,
``confusion.png`` (classification) or ``predictions.png`` (segmentation), TensorBoard logs in
``tb/``. Everything is written atomically, on the main process only. ``metrics["edge"]`` is the
edge column of the evaluated model (:mod:`downstream.edge.profile`; ``edge.enabled=false`` skips it).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import Iterator
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader

from downstream.config import TASK_KIND, RunConfig, read_task_data
from downstream.data.inputs import Inputs
from downstream.data.record import Catalog
from downstream.data.torchset import ImageSet
from downstream.data.transforms import GeometricAugment
from downstream.decontamination import Check, check_encoder, enforce, split_digests
from downstream.edge.profile import LatencyCache, profile
from downstream.edge.score import classification_deployment, segmentation_deployment
from downstream.encoders import Encoder, check_spec, deployable_spec, load_encoder, spec_label
from downstream.fit import FitResult, fit
from downstream.loaders import make_loader
from downstream.metrics import classification_metrics, plot_confusion
from downstream.models import Classifier, build_classifier, build_segmenter, check_input_size
from downstream.probe import FeatureCache, train_linear_probe
from downstream.report import plot_history
from downstream.splits import Splits, label_fraction, load_or_make_splits
from downstream.tasks import Classification, Segmentation
from downstream.tasks.segmentation import SegLoss, plot_predictions, predict_masks
from sonodistill.atomic import write_bytes, write_json
from sonodistill.config import save_config
from sonodistill.errors import UserError
from sonodistill.workers import available_cores, loader_workers
from sonodistill.world import make_accelerator

log = logging.getLogger(__name__)


def load_task_data(cfg: RunConfig) -> Catalog:
    return read_task_data(cfg.task, cfg.data, cfg.reader)


def split_path(cfg: RunConfig) -> Path:
    return Path(cfg.split.file) if cfg.split.file else Path(cfg.out) / "splits.json"


def _loader(catalog: Catalog, ids: list[str], cfg: RunConfig, train: bool, **targets: bool) -> DataLoader:
    """Training (shuffled, last partial batch dropped) or evaluation batches of ``ids``."""
    bs = cfg.train.batch_size if train else cfg.train.eval_batch_size
    return make_loader(
        ImageSet(catalog.subset(ids), cfg.image_size, **targets),
        bs,
        train=train,
        workers=cfg.num_workers,
        seed=cfg.seed,
    )


def _inputs(cfg: RunConfig, enc: Encoder, acc) -> Inputs:
    aug = GeometricAugment(cfg.image_size, cfg.augment) if cfg.augment.enabled else None
    return Inputs(enc.mean, enc.std, aug, channels_last=cfg.train.channels_last and acc.device.type == "cuda")


def _train_cfg(cfg: RunConfig, lr: float):
    return dataclasses.replace(cfg.train, lr=lr)


def _save_checkpoint(state: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save

    write_bytes(path, save({k: v.contiguous() for k, v in state.items()}))


def _segmentation(cfg, enc, catalog, splits, train_ids, acc, out, main) -> tuple[dict, dict, FitResult, nn.Module]:
    model = build_segmenter(enc)
    linear = cfg.mode == "linear"
    loss = SegLoss(cfg.train.dice_weight, cfg.train.bce_weight)
    task = Segmentation(model, _inputs(cfg, enc, acc), loss, frozen=model.encoder if linear else None)
    res = fit(
        task,
        _loader(catalog, train_ids, cfg, True, masks=True),
        _loader(catalog, splits.val, cfg, False, masks=True),
        _train_cfg(cfg, cfg.train.linear_lr if linear else cfg.train.lr),
        acc,
        name=f"{cfg.task} {cfg.mode}",
        log_dir=out / "tb",
        channels_last=cfg.train.channels_last,
    )
    test_loader = acc.prepare(_loader(catalog, splits.test, cfg, False, masks=True))
    val = res.history[res.best_epoch - 1]
    test = task.evaluate(test_loader, acc, per_image=True)
    if main:
        _prediction_panel(model, catalog, splits.test, cfg, enc, acc, test, out / "predictions.png")
    return {k[4:]: v for k, v in val.items() if k.startswith("val_")}, test, res, task.model


def _prediction_panel(model, catalog, test_ids, cfg, enc, acc, test, path) -> None:
    ds = ImageSet(catalog.subset(test_ids[:6]), cfg.image_size, masks=True)
    batch = {k: torch.stack([ds[i][k] for i in range(len(ds))]).to(acc.device) for k in ("image", "mask")}
    model.eval()
    pred = predict_masks(model, batch, enc.mean, enc.std, acc).cpu().numpy()[:, 0]
    dice = dict(zip(test["per_image"]["index"], test["per_image"]["dice"]))
    plot_predictions(
        batch["image"].cpu().numpy()[:, 0],
        batch["mask"].cpu().numpy()[:, 0] > 0,
        pred,
        [dice[i] for i in range(len(ds))],
        path,
        title=f"{cfg.task} · {spec_label(cfg.encoder)} · {cfg.mode} · test",
    )


def _classification(cfg, enc, catalog, splits, train_ids, acc, out, main) -> tuple[dict, dict, FitResult, nn.Module]:
    task = Classification(build_classifier(enc, len(catalog.classes)), _inputs(cfg, enc, acc), catalog.classes)
    res = fit(
        task,
        _loader(catalog, train_ids, cfg, True, labels=True),
        _loader(catalog, splits.val, cfg, False, labels=True),
        cfg.train,
        acc,
        name=f"{cfg.task} finetune",
        log_dir=out / "tb",
        channels_last=cfg.train.channels_last,
    )
    val = task.evaluate(acc.prepare(_loader(catalog, splits.val, cfg, False, labels=True)), acc)
    test = task.evaluate(acc.prepare(_loader(catalog, splits.test, cfg, False, labels=True)), acc)
    return val, test, res, task.model


def _probe(cfg, enc, catalog, splits, train_ids, acc, cache: FeatureCache) -> tuple[dict, dict, FitResult, nn.Module]:
    feats = cache.get(
        enc,
        catalog.records,
        catalog.fingerprint(),
        cfg.image_size,
        batch_size=cfg.probe.feature_batch_size,
        num_workers=cfg.num_workers,
        accelerator=acc,
    )
    index = catalog.by_id()

    def xy(ids):
        return torch.stack([feats[i] for i in ids]), torch.tensor([index[i].label for i in ids])

    (xt, yt), (xv, yv), (xs, ys) = xy(train_ids), xy(splits.val), xy(splits.test)
    pr = train_linear_probe(xt, yt, xv, yv, len(catalog.classes), cfg.probe, seed=cfg.seed)
    model = Classifier(enc.backbone, enc.num_features, len(catalog.classes))
    model.head.load_state_dict(pr.head.state_dict())
    with torch.no_grad():
        val = classification_metrics(yv.numpy(), pr.head(xv).softmax(1).numpy(), catalog.classes)
        test = classification_metrics(ys.numpy(), pr.head(xs).softmax(1).numpy(), catalog.classes)
    state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
    if acc.is_main_process:
        from torch.utils.tensorboard import SummaryWriter

        with SummaryWriter(str(Path(cfg.out) / "tb")) as writer:
            for h in pr.history:
                writer.add_scalar("train/loss", h["train_loss"], h["epoch"])
                writer.add_scalar("val/accuracy", h["val_accuracy"], h["epoch"])
    return val, test, FitResult(pr.history, pr.best_epoch, pr.best_val_accuracy, state), model


def prepare(cfg: RunConfig) -> tuple[Catalog, Splits, list[str]]:
    """Dataset, its (written/reused) split and this run's training subset."""
    catalog = load_task_data(cfg)
    split = cfg.split
    splits = load_or_make_splits(
        catalog,
        split_path(cfg),
        split.ratios,
        split.seed,
        duplicates=split.duplicates,
        label_conflicts=split.label_conflicts,
        workers=loader_workers(cfg.num_workers),
    )
    index = catalog.by_id()
    train_ids = label_fraction(splits.train, [index[i].label for i in splits.train], cfg.fraction, cfg.seed)
    if catalog.classes and TASK_KIND.get(cfg.task) == "cls":
        taught = {index[i].label for i in train_ids}
        absent = [c for k, c in enumerate(catalog.classes) if k not in taught]
        if absent:  # too few images of it to reach the training split: the model never sees the class
            log.warning(f"{cfg.task}: no training image of class(es) {', '.join(absent)} in this split and fraction")
    return catalog, splits, train_ids


def encoder_check(spec: str, task: str, strict: bool, catalog: Catalog, splits: Splits) -> Check:
    """Whether encoder ``spec``'s corpus was built against ``task``'s test split (a cell's encoder or
    the encoder a KD recipe's teacher is built from); refused when ``strict``."""
    check = check_encoder(spec, split_digests(catalog, splits.test))
    enforce(check, spec, task, strict)
    said = f"encoder '{spec_label(spec)}' on {task}: {check.reason}: {check.detail}"
    if check.status == "unchecked" and said not in _WARNED:  # once per process: a sweep has many cells of it
        _WARNED.add(said)
        log.warning(said)
    return check


_WARNED: set[str] = set()


@contextlib.contextmanager
def cpu_threads(num_workers: int, device: torch.device) -> Iterator[None]:
    """On CPU, leave one core per DataLoader worker: intra-op threads competing with decoding
    workers for the same cores made a 2-core run 3x slower. OMP_NUM_THREADS, if set, wins."""
    before = torch.get_num_threads()
    if device.type == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(max(1, min(before, available_cores() - num_workers)))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run(
    cfg: RunConfig, accelerator=None, cache: FeatureCache | None = None, latency: LatencyCache | None = None
) -> dict:
    """Execute one run and return its metrics (also written to ``OUT/metrics.json``)."""
    acc = accelerator or make_accelerator(cfg.mixed_precision, key="mixed_precision")
    with cpu_threads(cfg.num_workers, acc.device):
        return _run(cfg, acc, cache, latency)


def latency_cache(cfg: RunConfig) -> LatencyCache:
    """The latency cache next to the feature cache (in memory when there is no cache folder)."""
    return LatencyCache(Path(cfg.cache_dir) / "latency" if cfg.cache_dir else None)


def edge_column(cfg: RunConfig, model: nn.Module, enc: Encoder, catalog, splits, train_ids, latency, out) -> dict:
    """Size, compute, CPU latency and (deployable encoders) ONNX / INT8 of the evaluated model."""
    from downstream.data.inputs import Inputs

    inputs = Inputs(enc.mean, enc.std)
    prepare = lambda gray: inputs(gray, train=False)  # noqa: E731
    seg = TASK_KIND[cfg.task] == "seg"
    targets = {"masks": True} if seg else {"labels": True}
    test, calib = (
        _loader(catalog, splits.test, cfg, False, **targets),
        _loader(catalog, train_ids, cfg, False, **targets),
    )
    deployment = (
        segmentation_deployment(test, calib, prepare) if seg else classification_deployment(test, calib, prepare)
    )
    example = torch.zeros(1, 3, cfg.image_size, cfg.image_size)
    return profile(
        model,
        example,
        cfg.edge,
        deployable=deployable_spec(cfg.encoder),
        deployment=deployment,
        cache=latency,
        workdir=out,
    )


def _drop_earlier_outputs(out: Path, cfg: RunConfig, kind: str, checkpoint: bool) -> None:
    """The files an earlier run into ``out`` wrote that this one does not (another task's figure, a
    checkpoint this run did not save): left, they would describe another configuration."""
    stale = ["predictions.png"] if kind == "cls" else ["confusion.png"]
    if not (cfg.train.save_checkpoint and checkpoint):
        stale.append("best.safetensors")
    for name in stale:
        (out / name).unlink(missing_ok=True)


def _run(cfg: RunConfig, acc, cache: FeatureCache | None, latency: LatencyCache | None) -> dict:
    from accelerate.utils import set_seed

    t0 = time.perf_counter()
    kind = TASK_KIND[cfg.task]
    out = Path(cfg.out)
    check_spec(cfg.encoder)  # before any file is written: a typo leaves no half-made run folder
    if not 0 < cfg.fraction <= 1:
        raise UserError(f"fraction: expected 0 < fraction <= 1, got {cfg.fraction}")
    set_seed(cfg.seed)
    enc: Encoder = load_encoder(cfg.encoder)  # a bad spec is reported before the check below
    check_input_size(enc, cfg.image_size, kind == "seg")  # before the dataset's duplicate search
    catalog, splits, train_ids = prepare(cfg)  # seeded on its own: the global generators are left alone
    check = encoder_check(cfg.encoder, cfg.task, cfg.strict_decontamination, catalog, splits)
    main = acc.is_main_process
    if main:
        write_json(out / "subset.json", {"fraction": cfg.fraction, "seed": cfg.seed, "train": train_ids})
    if kind == "seg":
        val, test, res, model = _segmentation(cfg, enc, catalog, splits, train_ids, acc, out, main)
    elif cfg.mode == "linear":
        cache = cache or FeatureCache(cfg.cache_dir or out / "cache")
        val, test, res, model = _probe(cfg, enc, catalog, splits, train_ids, acc, cache)
    else:
        val, test, res, model = _classification(cfg, enc, catalog, splits, train_ids, acc, out, main)
    edge = None
    if main and cfg.edge.enabled:
        edge = edge_column(cfg, model, enc, catalog, splits, train_ids, latency or latency_cache(cfg), out)
    acc.wait_for_everyone()  # the next cell's work waits: nothing runs beside the latency timing
    metrics = {
        "task": cfg.task,
        "data": cfg.data,
        "dataset": catalog.name,
        "encoder": cfg.encoder,
        "mode": cfg.mode,
        "fraction": cfg.fraction,
        "seed": cfg.seed,
        "classes": catalog.classes,
        "n_train": len(train_ids),
        "n_val": len(splits.val),
        "n_test": len(splits.test),
        "params_m": round(enc.params_m, 3),
        "best_epoch": res.best_epoch,
        "val": val,
        "test": {k: v for k, v in test.items() if k != "per_image"},
        "decontamination": check.record(),
        "time_s": round(time.perf_counter() - t0, 2),
        "train_images_per_s": round(res.images_per_s, 1),
    }
    if edge is not None:
        metrics["edge"] = edge
    if main:
        if "per_image" in test:
            by_index = test["per_image"]
            metrics["test_per_image"] = [
                {"id": splits.test[i], "dice": d, "iou": j}
                for i, d, j in zip(by_index["index"], by_index["dice"], by_index["iou"])
            ]
        if kind == "cls":
            plot_confusion(
                test["confusion_matrix"],
                catalog.classes,
                out / "confusion.png",
                title=f"{spec_label(cfg.encoder)} · {cfg.mode} · test",
            )
        keys = (
            ["train_loss", "val_dice", "val_iou"] if kind == "seg" else ["train_loss", "val_accuracy", "val_macro_f1"]
        )
        plot_history(
            res.history,
            out / "curves.png",
            keys,
            title=f"{cfg.task} · {spec_label(cfg.encoder)} · {cfg.mode} · {cfg.fraction * 100:g} % labels",
        )
        if cfg.train.save_checkpoint and res.best_state is not None:
            _save_checkpoint(res.best_state, out / "best.safetensors")
        write_json(out / "metrics.json", metrics)
        save_config(cfg, out / "config.yaml")  # with the results it describes (a failed rerun keeps the old pair)
        _drop_earlier_outputs(out, cfg, kind, res.best_state is not None)
    acc.free_memory()  # drop the prepared model/optimizer/loaders: a sweep runs hundreds of cells in one process
    return metrics
