"""Paper 004 (CSA-MoE-Net): three experts over mask-derived views with Cross-Stage Attention and a
gate.

Paper settings (preset ``downstream/kd/configs/csa_moe.yaml``): benign vs malignant (BUSI ``normal``
has no lesion and is left out), 224 px pseudo-RGB, core = mask eroded 5x (3x3), boundary = mask
dilated 5x minus mask; random horizontal and vertical flips and +-15 degree rotation; Adam lr 5e-5
without weight decay, 30 epochs, batch 32, ReduceLROnPlateau(x0.5, patience 3, min 1e-6) on
validation loss, the best validation-accuracy epoch kept; seed 42; stratified 70/15/15 split;
``repeats`` runs (paper: 20) reported as mean +- SD. Backbones are ImageNet-initialised in the
paper: ``model.pretrained=true`` loads timm's weights from the local cache (random init otherwise).

Variants (``variants=[...]``): csa_moe, resnet_moe (no CSA), resnet18 (whole image only),
img_boundary / img_tumor (expert subsets, Table III), and the Table IV backbones densenet121,
densenet_moe, csa_moe_densenet, vgg16, vgg_moe, csa_moe_vgg.
Report: Tables I-IV (metrics mean +- SD, params and GMACs) and Fig. 4, the gate weights per epoch
(train solid, validation dashed; ``gates_<variant>.png``). Positive class = malignant.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from downstream.data.inputs import Inputs
from downstream.edge.measure import gmacs, num_params
from downstream.fit import FitConfig, fit
from downstream.kd.data import DataConfig, ViewSet, augmentation
from downstream.kd.models.csa_moe import VIEWS, CSAMoENet
from downstream.kd.pipeline import evaluate, seed_everything, stage, start
from downstream.kd.recipes.base import CellSpec, Entry
from downstream.kd.report import md_table, mean_sd, plot_history, plot_lines, write_report
from downstream.tasks import Classification
from sonodistill.atomic import write_json
from sonodistill.config import save_config, to_dict
from sonodistill.errors import UserError
from sonodistill.precision import MixedPrecision

NAME = "csa_moe"
TEACHER_OUTPUTS: tuple[str, ...] = ()  # no teacher: a multi-expert network trained with cross-entropy

# variant -> (backbone, views, cross-stage attention)
VARIANTS: dict[str, tuple[str, tuple[str, ...], bool]] = {
    "csa_moe": ("resnet18", VIEWS, True),
    "resnet_moe": ("resnet18", VIEWS, False),
    "resnet18": ("resnet18", ("image",), False),
    "img_boundary": ("resnet18", ("image", "boundary"), True),
    "img_tumor": ("resnet18", ("image", "core"), True),
    "densenet121": ("densenet121", ("image",), False),
    "densenet_moe": ("densenet121", VIEWS, False),
    "csa_moe_densenet": ("densenet121", VIEWS, True),
    "vgg16": ("vgg16", ("image",), False),
    "vgg_moe": ("vgg16", VIEWS, False),
    "csa_moe_vgg": ("vgg16", VIEWS, True),
}
LABELS = {
    "csa_moe": "CSA-MoE-Net",
    "resnet_moe": "ResNet-MoE",
    "resnet18": "ResNet-18",
    "img_boundary": "Expert-Img+Boundary",
    "img_tumor": "Expert-Img+Tumor",
    "densenet121": "DenseNet-121",
    "densenet_moe": "DenseNet-MoE",
    "csa_moe_densenet": "CSA-MoE-DenseNet",
    "vgg16": "VGG-16",
    "vgg_moe": "VGG-MoE",
    "csa_moe_vgg": "CSA-MoE-VGG",
}
PAPER = {  # Tables I-IV: accuracy, precision, recall, F1, AUC (%), params (M), FLOPs (G)
    "csa_moe": [96.33, 94.09, 98.53, 96.25, 99.50, 34.820, 5.472],
    "resnet_moe": [94.73, 94.11, 94.94, 94.51, 99.19, 33.958, 5.471],
    "resnet18": [93.32, 93.39, 93.16, 93.27, 94.08, 11.178, 1.824],
    "img_boundary": [95.94, 93.98, 98.04, 95.96, 99.54, None, None],
    "img_tumor": [95.27, 93.35, 97.08, 95.13, 99.49, None, None],
    "densenet121": [94.18, 95.42, 92.29, 93.82, 98.75, 6.956, 2.896],
    "densenet_moe": [95.00, 95.59, 93.90, 94.73, 99.13, 22.720, 9.012],
    "csa_moe_densenet": [95.78, 95.83, 95.34, 95.57, 99.23, 23.310, 9.013],
    "vgg16": [94.22, 94.39, 93.47, 93.93, 99.06, 134.269, 15.466],
    "vgg_moe": [95.19, 92.80, 97.52, 95.09, 99.40, 415.501, 46.040],
    "csa_moe_vgg": [96.88, 97.99, 95.42, 96.69, 99.14, 416.412, 46.041],
}
METRICS = ("accuracy", "precision", "recall", "f1", "auc")


@dataclass
class ModelConfig:
    pretrained: bool = False  # ImageNet weights from the local timm cache (the paper's initialisation)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)
    gate_hidden: int = 64
    gate_dropout: float = 0.2
    erode_dilate: int = 5  # morphology iterations for the core / boundary views


@dataclass
class AugmentConfig:
    hflip: float = 0.5
    vflip: float = 0.5
    degrees: float = 15.0


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    train: FitConfig = field(default_factory=FitConfig)
    variants: list[str] = field(
        default_factory=lambda: ["csa_moe", "resnet_moe", "resnet18", "img_boundary", "img_tumor"]
    )
    repeats: int = 20
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs, fp32 on CPU


def build(variant: str, m: ModelConfig, num_classes: int = 2) -> CSAMoENet:
    backbone, views, csa = VARIANTS[variant]
    return CSAMoENet(num_classes, backbone, views, csa, m.pretrained, m.gate_hidden, m.gate_dropout, m.backbone_kwargs)


class MoETask(Classification):
    """Cross-entropy on the fused logits of the experts' views; the gate weights (B, experts) are a
    per-sample extra, averaged per epoch for Fig. 4."""

    def __init__(self, model: CSAMoENet, inputs: Inputs, classes, view_index: list[int]):
        super().__init__(model, inputs, classes, key="views")
        self.view_index = view_index

    def logits(self, batch, train: bool):
        logits, gates = self.model(self.inputs(batch["views"], train)[:, self.view_index], with_gates=True)
        return logits, {"gates": gates}


def binary(metrics: dict, positive: str) -> dict[str, float | None]:
    pc = metrics["per_class"][positive]
    return {
        "accuracy": metrics["accuracy"],
        "precision": pc["precision"],
        "recall": pc["recall"],
        "f1": pc["f1"],
        "auc": metrics["auc"],
    }


def run(cfg: Config, data: str, out: Path) -> dict[str, Any]:
    unknown = [v for v in cfg.variants if v not in VARIANTS]
    if unknown or not cfg.variants:
        raise UserError(
            f"variants: unknown variant(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(VARIANTS)}"
        )
    if cfg.repeats < 1:
        raise UserError(f"repeats: expected >= 1, got {cfg.repeats}")
    r = start(data, cfg.data, out, cfg.seed, cfg.mixed_precision, need_masks=True, recipe=NAME)
    if len(r.prep.classes) != 2:
        raise UserError(f"data.classes: CSA-MoE-Net is a binary classifier; got {len(r.prep.classes)} classes")
    size = cfg.data.img_size
    if r.main:
        save_config(cfg, out / "config.yaml")
    dataset = lambda recs: ViewSet(recs, size, cfg.model.erode_dilate)  # noqa: E731
    train_set = dataset(r.prep.parts["train"])
    val_set = dataset(r.prep.parts["val"]) if r.prep.parts["val"] else None
    a = cfg.augment
    inputs = Inputs(augment=augmentation(a.hflip, a.vflip, a.degrees))
    positive = r.prep.classes[-1]
    results: dict[str, Any] = {}
    histories: dict[str, list] = {}
    for variant in cfg.variants:
        backbone, views, csa = VARIANTS[variant]
        runs, hists = [], []
        for rep in range(cfg.repeats):
            seed = cfg.seed + rep
            seed_everything(seed)
            model = build(variant, cfg.model)
            task = MoETask(model, inputs, r.prep.classes, [VIEWS.index(v) for v in views])
            arch = {
                "variant": variant,
                "backbone": backbone,
                "views": list(views),
                "csa": csa,
                "kwargs": cfg.model.backbone_kwargs,
            }

            def go(task=task, seed=seed, variant=variant):
                return fit(
                    task,
                    r.loader(train_set, cfg.train.batch_size, True, seed_offset=seed),
                    r.loader(val_set, cfg.train.batch_size, False) if val_set is not None else None,
                    cfg.train,
                    r.acc,
                    name=f"{variant}_run{seed}",
                    log_dir=out / "tb",
                )

            res = stage(
                r,
                f"{variant}/run{rep}",
                model,
                arch,
                {"train": to_dict(cfg.train), "aug": to_dict(a), "seed": seed, "model": to_dict(cfg.model)},
                go,
            )
            met, _ = evaluate(r, task, r.prep.parts["test"], dataset, f"{variant}_run{rep}", plot=rep == 0)
            runs.append(
                {
                    **binary(met, positive),
                    "macro_f1": met["macro_f1"],
                    "best_epoch": res.best_epoch,
                    "confusion_matrix": met["confusion_matrix"],
                }
            )
            hists.append(res.history)
        histories[variant] = hists[0]
        results[variant] = {
            "runs": runs,
            "params": num_params(model),
            "mean": {k: float(np.mean([x[k] for x in runs if x[k] is not None] or [np.nan])) for k in METRICS},
            "sd": {
                k: float(np.std([x[k] for x in runs if x[k] is not None] or [np.nan], ddof=1)) if len(runs) > 1 else 0.0
                for k in METRICS
            },
            "views": list(views),
            "backbone": backbone,
            "csa": csa,
        }
        if len(views) > 1:
            results[variant]["gates"] = gate_curves(hists)
    with torch.device("meta"):
        for variant in cfg.variants:
            n_views = len(VARIANTS[variant][1])
            results[variant]["gmacs"] = gmacs(build(variant, cfg.model), torch.zeros(1, n_views, 3, size, size))
    metrics = {
        "recipe": NAME,
        "data": data,
        "classes": r.prep.classes,
        "positive": positive,
        "splits": {k: len(v) for k, v in r.prep.parts.items()},
        "repeats": cfg.repeats,
        "img_size": size,
        "models": results,
        "paper": PAPER,
        "history": histories,
        "config": to_dict(cfg),
    }
    if r.main:
        write_json(out / "metrics.json", metrics)
        plot_history({LABELS[v]: h for v, h in histories.items()}, out / "curves.png")
        for variant, res in results.items():
            if "gates" in res:
                plot_gates(res["gates"], res["views"], out / f"gates_{variant}.png", LABELS[variant])
        report(metrics, out / "report.md")
    return metrics


def gate_curves(histories: list[list[dict]]) -> dict[str, list[list[float]]]:
    """Per-epoch mean gate weight per expert, averaged over repeats: {'train': [[w_e...] per epoch], 'val': ...}."""
    out = {}
    for part in ("train", "val"):
        key = f"{part}_gates"
        if histories and histories[0] and key in histories[0][0]:
            per_run = np.array([[row[key] for row in h] for h in histories])  # runs, epochs, experts
            out[part] = per_run.mean(0).tolist()
    return out


def plot_gates(gates: dict[str, list[list[float]]], views: list[str], path: Path, title: str) -> None:
    names = {"image": "Expert-Img", "core": "Expert-Tumor", "boundary": "Expert-Boundary"}
    epochs = list(range(1, len(gates["train"]) + 1))
    series, styles = {}, {}
    for e, v in enumerate(views):
        for part, ls in (("train", "-"), ("val", "--")):
            if part in gates:
                series[f"{names[v]} ({part})"] = [row[e] for row in gates[part]]
                styles[f"{names[v]} ({part})"] = f"C{e}{ls}"
    plot_lines(
        epochs, series, path, xlabel="epoch", ylabel="gate weight", title=f"{title}: expert weights", styles=styles
    )


def report(m: dict[str, Any], path: Path) -> None:
    res, paper = m["models"], m["paper"]

    def row(v: str) -> list[str]:
        return [mean_sd([x[k] for x in res[v]["runs"]]) for k in METRICS]

    t2 = md_table(
        [
            "Model",
            "Cross-Stage Attention",
            "Mixture of Experts",
            "Accuracy(%)",
            "Precision(%)",
            "Recall(%)",
            "F1(%)",
            "AUC(%)",
            "Paper Acc / AUC",
        ],
        [
            [
                LABELS[v],
                "✓" if res[v]["csa"] else "×",
                "✓" if len(res[v]["views"]) > 1 else "×",
                *row(v),
                f"{paper[v][0]} / {paper[v][4]}",
            ]
            for v in res
        ],
    )
    t4 = md_table(
        [
            "Model",
            "Acc(%)",
            "Pre(%)",
            "Recall(%)",
            "F1(%)",
            "AUC(%)",
            "Params(M)",
            "GMACs",
            "Paper Params(M)",
            "Paper FLOPs(G)",
        ],
        [
            [
                LABELS[v],
                *row(v),
                f"{res[v]['params'] / 1e6:.3f}",
                f"{res[v]['gmacs']:.3f}",
                paper[v][5] if paper[v][5] is not None else "",
                paper[v][6] if paper[v][6] is not None else "",
            ]
            for v in res
        ],
    )
    gates = "\n".join(f"![{LABELS[v]} gates](gates_{v}.png)" for v in res if "gates" in res[v])
    write_report(
        path,
        "CSA-MoE-Net: cross-stage attention multi-expert network (paper 004)",
        [
            (
                "Data",
                f"classes: {', '.join(m['classes'])} (positive: {m['positive']}); images train/val/test: "
                f"{m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']}; {m['repeats']} run(s) per model, "
                f"mean ± SD (sample SD) over runs.",
            ),
            ("Tables I-III. Test metrics per model", t2),
            (
                "Table IV. Metrics, parameters and complexity",
                t4 + f"\n\nGMACs at {m['img_size']} px (torch flop counter / 2; the paper's FLOPs are MACs at 224 px).",
            ),
            (
                "Figure 4. Expert gate weights per epoch (train solid, validation dashed)",
                gates or "(no multi-expert model run)",
            ),
        ],
    )


def summary_entries() -> list[Entry]:
    m = ModelConfig()
    out = []
    for v, (_, views, _) in VARIANTS.items():
        out.append(
            Entry(
                NAME,
                f"{LABELS[v]} ({len(views)} view{'s' if len(views) > 1 else ''})",
                lambda v=v: build(v, m),
                input_shape=(1, len(views), 3, 224, 224),
                paper_params_m=PAPER[v][5],
                paper_gflops=PAPER[v][6],
            )
        )
    return out


def _extract(metrics: dict, cfg: Config) -> dict[str, dict | None]:
    res = metrics["models"][cfg.variants[0]]
    return {"student": {**res["runs"][0], "params": res["params"]}, "teacher": None, "scratch": None}


def _deployed(cfg: Config, num_classes: int) -> tuple[torch.nn.Module, str]:
    return build(cfg.variants[0], cfg.model, num_classes), f"{cfg.variants[0]}/run0"


def _applies(catalog, cfg: Config) -> str | None:
    """CSA-MoE is a binary classifier of lesion views: every image needs a mask and the task's
    classes must be the recipe's own (else its test set would differ from the other rows)."""
    if not catalog.has_masks:
        return "needs a lesion mask for every image (tumour-core and boundary views)"
    want = list(cfg.data.classes) or list(catalog.classes)
    if len(want) != 2 or list(catalog.classes) != want:
        return (
            f"binary classifier of {', '.join(want)} (data.classes); this task has classes "
            f"{', '.join(catalog.classes)}, so its test set would differ from the other rows"
        )
    return None


def _prepare(cfg: Config):
    """The views of the first variant, ImageNet-normalised view by view (as MoETask feeds them)."""
    index = [VIEWS.index(v) for v in VARIANTS[cfg.variants[0]][1]]
    inputs = Inputs()
    return lambda views: inputs(views, train=False)[:, index]


CELL = CellSpec(
    kind="cls",
    extract=_extract,
    deployed=_deployed,
    overrides=("variants=[csa_moe]", "repeats=1"),
    views=True,
    prepare=_prepare,
    applies=_applies,
)
