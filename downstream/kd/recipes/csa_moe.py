"""Paper 004 (CSA-MoE-Net): three experts over mask-derived views with Cross-Stage Attention and a
gate.

Paper settings (preset ``downstream/kd/configs/csa_moe.yaml``): benign vs malignant (BUSI ``normal``
has no lesion and is left out), 224 px pseudo-RGB, core = mask eroded 5x (3x3), boundary = mask
dilated 5x minus mask; random horizontal and vertical flips and +-15 degree rotation; Adam lr 5e-5
without weight decay, 30 epochs, batch 32, ReduceLROnPlateau(x0.5, patience 3, min 1e-6) on
validation loss, the best validation-accuracy epoch kept; seed 42; stratified 70/15/15 split.
Backbones are ImageNet-initialised in the paper: ``model.pretrained=true`` loads timm's weights
from the local cache (random init otherwise). Positive class = malignant.

Variants (``variants=[...]``): csa_moe, resnet_moe (no CSA), resnet18 (whole image only),
img_boundary / img_tumor (expert subsets, Table III), and the Table IV backbones densenet121,
densenet_moe, csa_moe_densenet, vgg16, vgg_moe, csa_moe_vgg. One run of the recipe (a sweep cell)
trains the first of ``variants`` once; the paper's reproduction, every variant ``repeats`` times
(mean +- SD), its Tables I-IV and Fig. 4: :mod:`downstream.kd.papers.csa_moe`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from downstream.data import Record
from downstream.data.inputs import Inputs
from downstream.data.record import Catalog
from downstream.edge.measure import num_params
from downstream.fit import FitConfig, fit
from downstream.kd.config import FlipRotateConfig, RecipeConfig
from downstream.kd.data import PreparedData, ViewSet, augmentation
from downstream.kd.models.csa_moe import VIEWS, CSAMoENet
from downstream.kd.pipeline import Run, StageResult, evaluate, seed_everything, stage, start
from downstream.kd.recipes.base import Deployed, Entry, Recipe, RecipeResult
from downstream.tasks import Classification
from sonodistill.config import to_dict
from sonodistill.errors import UserError

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
# Tables I-IV as reported: accuracy, precision, recall, F1, AUC (%), params (M), FLOPs (G); the sizes
# are the summary's (python -m downstream.kd summary), the metrics the reproduction's report
PAPER = {
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


@dataclass
class CSAMoEModelConfig:
    """The experts' backbones, the gate and the mask-derived views."""

    pretrained: bool = False  # ImageNet weights from the local timm cache (the paper's initialisation)
    backbone_kwargs: dict[str, Any] = field(default_factory=dict)  # extra timm arguments, e.g. {layers: [1, 1, 1, 1]}
    gate_hidden: int = 64  # hidden width of the gating network
    gate_dropout: float = 0.2  # dropout in the gating network
    erode_dilate: int = 5  # morphology iterations for the core / boundary views

    def check(self, key: str) -> None:
        if self.gate_hidden < 1:
            raise UserError(f"{key}.gate_hidden: expected a width of at least 1, got {self.gate_hidden}")
        if not 0 <= self.gate_dropout < 1:
            raise UserError(f"{key}.gate_dropout: expected a probability from 0 to below 1, got {self.gate_dropout}")
        if self.erode_dilate < 1:  # OpenCV takes fewer as one iteration
            raise UserError(f"{key}.erode_dilate: expected at least 1 morphology iteration, got {self.erode_dilate}")


@dataclass
class CSAMoEConfig(RecipeConfig):
    """Paper 004's recipe: CSA-MoE-Net (or an ablation variant) trained with cross-entropy."""

    model: CSAMoEModelConfig = field(default_factory=CSAMoEModelConfig)
    augment: FlipRotateConfig = field(default_factory=lambda: FlipRotateConfig(hflip=0.5, vflip=0.5, degrees=15.0))
    train: FitConfig = field(default_factory=FitConfig)
    variants: list[str] = field(  # models: one run (a sweep cell) trains the first, the reproduction each
        default_factory=lambda: ["csa_moe", "resnet_moe", "resnet18", "img_boundary", "img_tumor"]
    )


def build(variant: str, m: CSAMoEModelConfig, num_classes: int = 2) -> CSAMoENet:
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


def check_variants(variants: Sequence[str]) -> None:
    unknown = [v for v in variants if v not in VARIANTS]
    if unknown or not variants:
        raise UserError(
            f"variants: unknown variant(s) {', '.join(unknown) or '(none given)'}; valid: {', '.join(VARIANTS)}"
        )


@dataclass
class MoERun:
    """What the runs of one CSA-MoE recipe or reproduction share: data as views, the augmentation."""

    r: Run
    cfg: CSAMoEConfig
    inputs: Inputs
    train_set: ViewSet
    val_set: ViewSet | None

    @classmethod
    def start(cls, cfg: CSAMoEConfig, data: PreparedData, out: Path) -> MoERun:
        if len(data.classes) != 2:
            raise UserError(f"classes: CSA-MoE-Net is a binary classifier; got {len(data.classes)} classes")
        r = start(cfg, data, out)
        views = lambda records: ViewSet(records, cfg.image_size, cfg.model.erode_dilate)  # noqa: E731
        val = views(data.parts["val"]) if data.parts["val"] else None
        return cls(r, cfg, Inputs(augment=augmentation(cfg.augment)), views(data.parts["train"]), val)

    @property
    def positive(self) -> str:
        return self.r.prep.classes[-1]

    def dataset(self, records: Sequence[Record]) -> ViewSet:
        return ViewSet(records, self.cfg.image_size, self.cfg.model.erode_dilate)


def train_variant(m: MoERun, variant: str, rep: int) -> tuple[CSAMoENet, dict[str, Any], StageResult]:
    """Repeat ``rep`` of ``variant`` (seed ``seed + rep``): the model, its test metrics, its stage."""
    cfg, r = m.cfg, m.r
    backbone, views, csa = VARIANTS[variant]
    seed = cfg.seed + rep
    seed_everything(seed)
    model = build(variant, cfg.model)
    task = MoETask(model, m.inputs, r.prep.classes, [VIEWS.index(v) for v in views])
    arch = {
        "variant": variant,
        "backbone": backbone,
        "views": list(views),
        "csa": csa,
        "kwargs": cfg.model.backbone_kwargs,
    }

    def go():
        return fit(
            task,
            r.loader(m.train_set, cfg.train.batch_size, True, seed_offset=seed),
            r.loader(m.val_set, cfg.train.batch_size, False) if m.val_set is not None else None,
            cfg.train,
            r.acc,
            name=f"{variant}_run{seed}",
            log_dir=r.out / "tb",
        )

    key = {"train": to_dict(cfg.train), "aug": to_dict(cfg.augment), "seed": seed, "model": to_dict(cfg.model)}
    res = stage(r, f"{variant}/run{rep}", model, arch, key, go)
    met, _ = evaluate(r, task, r.prep.parts["test"], m.dataset, f"{variant}_run{rep}", plot=rep == 0)
    scores = {**binary(met, m.positive), "macro_f1": met["macro_f1"], "best_epoch": res.best_epoch}
    return model, {**scores, "confusion_matrix": met["confusion_matrix"]}, res


class CSAMoE(Recipe):
    name = "csa_moe"
    config = CSAMoEConfig
    kind = "cls"
    teacher_outputs = ()  # no teacher: a multi-expert network trained with cross-entropy
    needs_masks = True

    def run(self, cfg: CSAMoEConfig, data: PreparedData, out: Path) -> RecipeResult:
        check_variants(cfg.variants)
        m = MoERun.start(cfg, data, out)
        variant = cfg.variants[0]
        model, met, res = train_variant(m, variant, 0)
        student = {**met, "params": num_params(model)}
        metrics = {
            "recipe": self.name,
            "data": data.source,
            "classes": data.classes,
            "positive": m.positive,
            "splits": {k: len(v) for k, v in data.parts.items()},
            "models": {variant: student},
            "history": {variant: res.history},
            "config": to_dict(cfg),
        }
        index = [VIEWS.index(v) for v in VARIANTS[variant][1]]
        inputs = Inputs()  # the views ImageNet-normalised view by view, as MoETask feeds them
        deployed = Deployed(model, m.dataset, lambda views: inputs(views, train=False)[:, index], key="views")
        seconds = 0.0 if res.reused else res.seconds
        return RecipeResult(metrics, student, deployed, models={variant: model}, train_seconds=seconds)

    def applies(self, catalog: Catalog, cfg: CSAMoEConfig) -> str | None:
        """CSA-MoE is a binary classifier of lesion views: every image needs a mask and the task's
        classes must be the recipe's own (else its test set would differ from the other rows)."""
        if not catalog.has_masks:
            return "needs a lesion mask for every image (tumour-core and boundary views)"
        want = list(cfg.classes) or list(catalog.classes)
        if len(want) != 2 or list(catalog.classes) != want:
            return (
                f"binary classifier of {', '.join(want)} (classes); this task has classes "
                f"{', '.join(catalog.classes)}, so its test set would differ from the other rows"
            )
        return None

    def summary_entries(self) -> list[Entry]:
        m = CSAMoEModelConfig()
        out = []
        for v, (_, views, _) in VARIANTS.items():
            out.append(
                Entry(
                    self.name,
                    f"{LABELS[v]} ({len(views)} view{'s' if len(views) > 1 else ''})",
                    lambda v=v: build(v, m),
                    input_shape=(1, len(views), 3, 224, 224),
                    paper_params_m=PAPER[v][5],
                    paper_gflops=PAPER[v][6],
                )
            )
        return out


RECIPE = CSAMoE()
