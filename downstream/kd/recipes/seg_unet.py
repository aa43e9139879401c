"""Segmentation KD: a U-Net teacher on any encoder (default: the distilled ResNet-50 export)
distilled into a small U-Net student, after Liu et al. (CVPR 2019, structured knowledge
distillation for semantic segmentation; losses in :mod:`downstream.kd.seg_losses`).

Teacher: ``teacher.encoder`` (a spec of :mod:`downstream.encoders`; in a sweep it defaults to the
sweep's distilled encoder) in the downstream U-Net (:func:`downstream.models.build_segmenter`),
fine-tuned on the run's labels exactly as a downstream fine-tuning cell is (Dice + BCE, geometric
augmentation, AdamW), or loaded from ``teacher.checkpoint``. Student: ``smp.Unet`` on a timm
encoder, default ``tu-efficientnet_lite0`` (EfficientNet-Lite0: ReLU6 and no squeeze-excitation,
designed to quantise well; 5.2 M parameters with smp's default decoder), random init unless
``student.pretrained``. The from-scratch baseline and the distilled student start from the same
weights; only the loss differs:

    dice_weight * Dice + bce_weight * BCE                   (the task loss, as downstream fine-tuning)
    + pixel_weight * T^2 * mean_pixels KL(teacher || student)   (pixel-wise, Liu et al. eq. 1)
    + pair_weight * mean (a_ij^S - a_ij^T)^2                    (pair-wise on the last decoder map, eq. 2)
    + feature_weight * mean_stages MSE(1x1(F_j^S), F_j^T)       (optional decoder-stage hints, FitNets)

``student.unlabelled=true`` also distils on the training split's images outside the label subset
(``data.subset``): the teacher's soft masks are the only target there, the task loss reads labels
only where they exist (semi-supervised distillation: the images of a limited-label split are
usually all available). Off by default: the encoder rows of a sweep never see those images. On
synthetic DDTI with 21 labelled images (bench/seg_kd.py, 3 seeds) it is what made distillation
pay: labelled-only KD ended below the scratch student, KD with the unlabelled images at the teacher.

Defaults (preset ``downstream/kd/configs/seg_unet.yaml``): pixel_weight 10, T 1, pair_weight 0.5 on
a 2 x 2 node grid: the values of the authors' released code; feature matching off. The teacher
runs on every augmented batch (the image and mask are augmented once, then normalised for each
model). Not from the paper, chosen here: AdamW lr 1e-4 for the teacher (the sweep's fine-tuning
rate), 1e-3 for the students trained from scratch; the best validation Dice is kept.
Report: teacher / scratch / distilled test Dice and IoU, parameters, GMACs (``report.md``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from downstream.data import ImageSet
from downstream.data.inputs import IMAGENET_MEAN, IMAGENET_STD, Inputs
from downstream.data.transforms import GeometricAugment, GeometricAugmentConfig, to_input
from downstream.edge.measure import gmacs, num_params
from downstream.fit import FitConfig, fit
from downstream.kd.checkpoint import load_model
from downstream.kd.data import DataConfig
from downstream.kd.models.encoder_teacher import encoder_stamp
from downstream.kd.pipeline import seed_everything, stage, start, teacher_key
from downstream.kd.recipes.base import CellSpec, Entry, roles
from downstream.kd.report import md_table, plot_history, write_report
from downstream.kd.seg_losses import SegKDLossConfig, pair_wise, pixel_kl, stage_matching
from downstream.kd.tasks import freeze
from downstream.metrics import dice_iou
from downstream.tasks import Segmentation
from downstream.tasks.segmentation import SegLoss, evaluate_seg
from sonodistill.atomic import write_json
from sonodistill.config import save_config, to_dict
from sonodistill.errors import UserError
from sonodistill.precision import MixedPrecision

NAME = "seg_unet"
TEACHER_OUTPUTS = ("logits", "last decoder map", "decoder stages (feature_weight > 0)")


@dataclass
class TeacherConfig:
    encoder: str = ""  # encoder spec (export folder, hf-hub:, timm:, dinov3:, rand); a sweep defaults it
    checkpoint: str = ""  # a trained teacher U-Net (model.safetensors of a previous run) instead of training one
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class StudentConfig:
    encoder: str = "tu-efficientnet_lite0"  # any smp encoder name (tu-<timm name> for timm backbones)
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])
    pretrained: bool = False  # ImageNet weights from the local cache
    unlabelled: bool = False  # also distil on the training split's images outside data.subset (no labels used)
    train: FitConfig = field(default_factory=FitConfig)


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    teacher: TeacherConfig = field(default_factory=TeacherConfig)
    student: StudentConfig = field(default_factory=StudentConfig)
    loss: SegKDLossConfig = field(default_factory=SegKDLossConfig)
    augment: GeometricAugmentConfig = field(default_factory=GeometricAugmentConfig)
    seed: int = 42
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs, fp32 on CPU


class Student(nn.Module):
    """The student U-Net plus the 1x1 adapters of decoder-stage matching (training only, not deployed)."""

    def __init__(self, cfg: StudentConfig, teacher_widths: list[int] | None = None):
        super().__init__()
        import segmentation_models_pytorch as smp

        try:
            self.unet = smp.Unet(
                cfg.encoder,
                encoder_weights="imagenet" if cfg.pretrained else None,
                classes=1,
                decoder_channels=list(cfg.decoder_channels),
            )
        except (KeyError, ValueError, RuntimeError, OSError) as exc:
            raise UserError(
                f"student.encoder: smp cannot build a U-Net on '{cfg.encoder}' ({' '.join(str(exc).split())[:200]})"
            ) from None
        widths = list(cfg.decoder_channels)
        self.adapters = nn.ModuleList(
            [nn.Conv2d(s, t, 1, bias=False) for s, t in zip(widths, teacher_widths)] if teacher_widths else []
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.unet(x)


def build_teacher(enc) -> nn.Module:
    from downstream.models import build_segmenter

    return build_segmenter(enc)


def decoder_stages(model: nn.Module) -> list[nn.Module]:
    """The decoder blocks of an smp U-Net (their outputs are the decoder stages), else []."""
    decoder = getattr(model, "decoder", None)
    return list(getattr(decoder, "blocks", []))


def last_map(model: nn.Module) -> nn.Module:
    """The module whose output is the feature map before the 1x1 classifier (pair-wise loss)."""
    if hasattr(model, "decoder"):
        return model.decoder  # smp U-Net: the last decoder block's output
    return model.head[-2]  # downstream's DINOv3 head: the activation before its last convolution


class Capture:
    """Forward hooks that keep the latest outputs of some modules."""

    def __init__(self, modules: list[nn.Module]):
        self.outputs: list[torch.Tensor | None] = [None] * len(modules)
        self.handles = [m.register_forward_hook(self._hook(i)) for i, m in enumerate(modules)]

    def _hook(self, i: int):
        def keep(module, args, output):
            self.outputs[i] = output

        return keep


class Flagged(ImageSet):
    """:class:`ImageSet` items plus ``labelled``: False for the images whose mask the student may not see."""

    def __init__(self, labelled, unlabelled, size: int):
        super().__init__([*labelled, *unlabelled], size, masks=True)
        self.n_labelled = len(labelled)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        item = super().__getitem__(i)
        item["labelled"] = torch.tensor(i < self.n_labelled)
        return item


class SegKD(Segmentation):
    """The student against the mask (task loss) and a frozen teacher U-Net (pixel, pair, stages)."""

    def __init__(
        self,
        student: Student,
        inputs: Inputs,
        teacher: nn.Module,
        teacher_inputs: Inputs,
        cfg: SegKDLossConfig,
    ):
        super().__init__(student, inputs, SegLoss(cfg.dice_weight, cfg.bce_weight))
        self.teacher, self.t_inputs, self.cfg = teacher, teacher_inputs, cfg
        stages = cfg.feature_weight > 0
        self.s_cap = Capture([last_map(student.unet)] + (decoder_stages(student.unet) if stages else []))
        self.t_cap = Capture([last_map(teacher)] + (decoder_stages(teacher) if stages else []))

    def __call__(self, batch: dict) -> dict:
        img, mask = self.image_and_mask(batch)
        logits = self.model(to_input(img, self.inputs.mean, self.inputs.std, channels_last=self.inputs.channels_last))
        with torch.no_grad():
            t_logits = self.teacher(to_input(img, self.t_inputs.mean, self.t_inputs.std))
        c = self.cfg
        labelled = batch.get("labelled")
        if labelled is None:
            task = self.loss(logits, mask)
        elif labelled.any():  # semi-supervised distillation: the task loss where a label exists
            task = self.loss(logits[labelled], mask[labelled])
        else:
            task = logits.float().sum() * 0.0
        pix = pixel_kl(logits, t_logits, c.temperature) if c.pixel_weight > 0 else task.new_zeros(())
        s_out, t_out = self.s_cap.outputs, self.t_cap.outputs
        pair = pair_wise(s_out[0], t_out[0], c.pair_nodes) if c.pair_weight > 0 else task.new_zeros(())
        feat = task.new_zeros(())
        if c.feature_weight > 0:
            adapters = self.model.adapters if hasattr(self.model, "adapters") else self.model.module.adapters
            feat = stage_matching([a(s) for a, s in zip(adapters, s_out[1:])], t_out[1:])
        loss = task + c.pixel_weight * pix + c.pair_weight * pair + c.feature_weight * feat
        return {"loss": loss, "output": logits, "task": task, "pixel": pix, "pair": pair, "feat": feat}

    def evaluate(self, loader, accelerator, per_image: bool = False) -> dict:
        return evaluate_seg(self.model, loader, self.inputs.mean, self.inputs.std, accelerator, per_image)


@torch.no_grad()
def test_logits(model: nn.Module, loader, mean, std, acc) -> torch.Tensor:
    """Logit maps over ``loader`` (in order), for comparing the students with the teacher."""
    model.eval()
    out = []
    for b in loader:
        with acc.autocast():
            out.append(model(to_input(b["image"], mean, std)).float().cpu())
    return torch.cat(out)


def student_arch(cfg: StudentConfig, adapters: bool) -> dict[str, Any]:
    return {
        "model": "unet",
        "encoder": cfg.encoder,
        "decoder_channels": list(cfg.decoder_channels),
        "adapters": adapters,
    }


def run(cfg: Config, data: str, out: Path) -> dict[str, Any]:
    if not cfg.teacher.encoder:
        raise UserError(
            "teacher.encoder: give the teacher's encoder spec, e.g. the distilled ResNet-50 export folder "
            "(in a sweep it defaults to the sweep's distilled encoder)"
        )
    from downstream.encoders import load_encoder
    from downstream.models import check_input_size

    r = start(data, cfg.data, out, cfg.seed, cfg.mixed_precision, recipe=NAME, kind="seg")
    size = cfg.data.img_size
    if r.main:
        save_config(cfg, out / "config.yaml")
    seed_everything(cfg.seed)
    enc = load_encoder(cfg.teacher.encoder)
    check_input_size(enc, size, True)
    if size % 32:
        raise UserError(f"data.img_size: a U-Net student needs a multiple of 32, got {size}")
    teacher = build_teacher(enc)
    stages = cfg.loss.feature_weight > 0
    t_widths = [b.conv2[0].out_channels for b in decoder_stages(teacher)] if stages else None
    if stages and not t_widths:
        raise UserError(
            f"loss.feature_weight: teacher '{cfg.teacher.encoder}' has no U-Net decoder stages to match "
            "(DINOv3 teachers get a single-scale head); set loss.feature_weight=0"
        )
    aug = GeometricAugment(size, cfg.augment) if cfg.augment.enabled else None
    t_inputs = Inputs(enc.mean, enc.std, aug)
    s_inputs = Inputs(IMAGENET_MEAN, IMAGENET_STD, aug)
    dataset = lambda recs: ImageSet(recs, size, masks=True)  # noqa: E731
    train_set = dataset(r.prep.parts["train"])
    val_set = dataset(r.prep.parts["val"]) if r.prep.parts["val"] else None
    seg_loss = SegLoss(cfg.loss.dice_weight, cfg.loss.bce_weight)

    def fit_with(task, fcfg: FitConfig, name: str):
        return lambda: fit(
            task,
            r.loader(train_set, fcfg.batch_size, True),
            r.loader(val_set, fcfg.batch_size, False) if val_set is not None else None,
            fcfg,
            r.acc,
            name=name,
            log_dir=out / "tb",
        )

    t_arch = {"model": "unet", "encoder": cfg.teacher.encoder, "weights": encoder_stamp(cfg.teacher.encoder)}
    stages_done = {}
    if cfg.teacher.checkpoint:
        load_model(teacher, cfg.teacher.checkpoint, arch=t_arch, key="teacher.checkpoint")
    else:
        stages_done["teacher"] = stage(
            r,
            "teacher",
            teacher,
            t_arch,
            {"train": to_dict(cfg.teacher.train), "augment": to_dict(cfg.augment), "seed": cfg.seed},
            fit_with(Segmentation(teacher, t_inputs, seg_loss), cfg.teacher.train, "teacher"),
        )
    teacher = freeze(teacher.to(r.acc.device))

    seed_everything(cfg.seed + 1)
    scratch = Student(cfg.student)
    init = {k: v.clone() for k, v in scratch.unet.state_dict().items()}
    s_key = {"train": to_dict(cfg.student.train), "augment": to_dict(cfg.augment), "seed": cfg.seed}
    stages_done["scratch"] = stage(
        r,
        "scratch",
        scratch,
        student_arch(cfg.student, False),
        s_key,
        fit_with(Segmentation(scratch, s_inputs, seg_loss), cfg.student.train, "scratch"),
    )
    distilled = Student(cfg.student, t_widths)
    distilled.unet.load_state_dict(init)  # same initialisation as the baseline: only the loss differs
    unlabelled = r.prep.unlabelled if cfg.student.unlabelled else []
    kd_set = Flagged(r.prep.parts["train"], unlabelled, size) if unlabelled else train_set
    kd_fit = lambda: fit(  # noqa: E731
        SegKD(distilled, s_inputs, teacher, t_inputs, cfg.loss),
        r.loader(kd_set, cfg.student.train.batch_size, True),
        r.loader(val_set, cfg.student.train.batch_size, False) if val_set is not None else None,
        cfg.student.train,
        r.acc,
        name="distilled",
        log_dir=out / "tb",
    )
    stages_done["distilled"] = stage(
        r,
        "distilled",
        distilled,
        student_arch(cfg.student, bool(t_widths)),
        {
            **s_key,
            "loss": to_dict(cfg.loss),
            "teacher": teacher_key(cfg.teacher.checkpoint, t_arch, cfg.teacher),
            "unlabelled": [x.id for x in unlabelled],
        },
        kd_fit,
    )

    test = r.acc.prepare(r.loader(dataset(r.prep.parts["test"]), cfg.student.train.batch_size, False))
    models = {"teacher": (teacher, enc.mean, enc.std), "scratch": (scratch.unet, IMAGENET_MEAN, IMAGENET_STD)}
    models["distilled"] = (distilled.unet, IMAGENET_MEAN, IMAGENET_STD)
    results: dict[str, dict] = {}
    x = torch.zeros(1, 3, size, size)
    logits = {}
    for name, (model, mean, std) in models.items():
        model = model.to(r.acc.device)
        met = evaluate_seg(model, test, mean, std, r.acc)
        logits[name] = test_logits(model, test, mean, std, r.acc)
        met["params"] = num_params(model)
        met["gmacs"] = gmacs(model.to("cpu"), x)
        met["best_epoch"] = stages_done[name].best_epoch if name in stages_done else 0
        results[name] = met
    for name in ("scratch", "distilled"):  # how closely each student reproduces the teacher on the test split
        results[name]["teacher_dice"] = float(dice_iou(logits[name] > 0, logits["teacher"] > 0)[0].mean())
        results[name]["teacher_kl"] = float(pixel_kl(logits[name], logits["teacher"], 1.0))
    metrics = {
        "recipe": NAME,
        "data": data,
        "splits": {k: len(v) for k, v in r.prep.parts.items()},
        "img_size": size,
        "models": results,
        "history": {k: v.history for k, v in stages_done.items()},
        "config": to_dict(cfg),
    }
    if r.main:
        write_json(out / "metrics.json", metrics)
        plot_history({k: v.history for k, v in stages_done.items() if v.history}, out / "curves.png", "dice")
        report(metrics, out / "report.md")
    return metrics


def report(m: dict[str, Any], path: Path) -> None:
    c = m["config"]
    rows = [
        [
            label,
            f"{mm['dice']:.4f}",
            f"{mm['iou']:.4f}",
            f"{mm['teacher_dice']:.4f}" if "teacher_dice" in mm else "",
            f"{mm['params'] / 1e6:.2f}M",
            f"{mm['gmacs']:.3f}",
        ]
        for label, mm in (
            (f"Teacher U-Net ({c['teacher']['encoder']})", m["models"]["teacher"]),
            (f"Student ({c['student']['encoder']}) from scratch", m["models"]["scratch"]),
            (f"Student ({c['student']['encoder']}) distilled", m["models"]["distilled"]),
        )
    ]
    loss = c["loss"]
    write_report(
        path,
        "Segmentation KD: U-Net teacher -> small U-Net student (Liu et al., CVPR 2019)",
        [
            (
                "Data",
                f"images train/val/test: {m['splits']['train']}/{m['splits']['val']}/{m['splits']['test']}; "
                f"{m['img_size']} px.",
            ),
            (
                "Test metrics",
                md_table(["Model", "Dice", "IoU", "Dice with the teacher", "Params", f"GMACs@{m['img_size']}"], rows)
                + f"\n\nLoss: task (Dice + BCE) + {loss['pixel_weight']} x pixel-wise KL (T = "
                f"{loss['temperature']}) + {loss['pair_weight']} x pair-wise ({loss['pair_nodes']}x"
                f"{loss['pair_nodes']} nodes) + {loss['feature_weight']} x decoder-stage matching. Curves: curves.png.",
            ),
        ],
    )


def summary_entries() -> list[Entry]:
    return [
        Entry(NAME, "student: U-Net on EfficientNet-Lite0", lambda: Student(StudentConfig()).unet),
        Entry(
            NAME,
            "teacher: U-Net on ResNet-50 (the distilled export's architecture)",
            lambda: _resnet50_unet(),
        ),
    ]


def _resnet50_unet() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet50", encoder_weights=None, classes=1)


def _deployed(cfg: Config, num_classes: int) -> tuple[nn.Module, str]:
    return Student(cfg.student, None).unet, "distilled"


# the deployed student is the U-Net without the training-only adapters
CELL = CellSpec(kind="seg", extract=roles("distilled"), deployed=_deployed, state_prefix="unet.")
