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
(``subset``): the teacher's soft masks are the only target there, the task loss reads labels
only where they exist (semi-supervised distillation: the images of a limited-label split are
usually all available). Off by default: the encoder rows of a sweep never see those images. On
synthetic DDTI with 21 labelled images (bench/seg_kd.py, 3 seeds) it is what made distillation
pay: labelled-only KD ended below the scratch student, KD with the unlabelled images at the teacher.

Defaults (preset ``downstream/kd/configs/seg_unet.yaml``): pixel_weight 10, T 1, pair_weight 0.5 on
a 2 x 2 node grid: the values of the authors' released code; feature matching off. The teacher
runs on every augmented batch (the image and mask are augmented once, then normalised for each
model). Not from the paper, chosen here: AdamW lr 1e-4 for the teacher (the sweep's fine-tuning
rate), 1e-3 for the students trained from scratch; the best validation Dice is kept.
Its report (teacher / scratch / distilled test Dice and IoU, parameters, GMACs):
:mod:`downstream.kd.papers.seg_unet`.
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
from downstream.encoders import Encoder
from downstream.fit import FitConfig, fit
from downstream.kd.checkpoint import check_unseen, load_model
from downstream.kd.config import RecipeConfig
from downstream.kd.data import PreparedData
from downstream.kd.models.encoder_teacher import encoder_stamp
from downstream.kd.pipeline import Run, StageResult, seed_everything, stage, start, teacher_key, trained_seconds
from downstream.kd.recipes.base import Entry, Recipe, RecipeResult, image_deployment
from downstream.kd.seg_losses import SegKDLossConfig, pair_wise, pixel_kl, stage_matching
from downstream.kd.tasks import freeze
from downstream.metrics import dice_iou
from downstream.tasks import Segmentation
from downstream.tasks.segmentation import SegLoss, evaluate_seg
from sonodistill.config import ConfigError, to_dict
from sonodistill.errors import UserError


@dataclass
class SegTeacherConfig:
    """The teacher: the downstream U-Net on an encoder, fine-tuned on the run's labels."""

    encoder: str = ""  # encoder spec (export folder, hf-hub:, timm:, dinov3:, rand); a sweep defaults it
    checkpoint: str = ""  # a trained teacher U-Net (model.safetensors of a previous run) instead of training one
    train: FitConfig = field(default_factory=FitConfig)


UNET_DEPTH = 5  # smp.Unet's encoder_depth, which the student keeps: one decoder width per stage


@dataclass
class SegStudentConfig:
    """The student: an smp U-Net on a timm encoder, from scratch and distilled from the same start."""

    encoder: str = "tu-efficientnet_lite0"  # any smp encoder name (tu-<timm name> for timm backbones)
    decoder_channels: list[int] = field(default_factory=lambda: [256, 128, 64, 32, 16])  # U-Net decoder widths
    pretrained: bool = False  # ImageNet weights from the local cache
    unlabelled: bool = False  # also distil on the training split's images outside the label subset (no labels used)
    train: FitConfig = field(default_factory=FitConfig)

    def __post_init__(self) -> None:
        c = self.decoder_channels
        if len(c) != UNET_DEPTH or not all(isinstance(v, int) and v > 0 for v in c):
            raise ConfigError(
                f"student.decoder_channels: expected {UNET_DEPTH} positive widths, one per U-Net decoder stage, got {c}"
            )


@dataclass
class SegUNetConfig(RecipeConfig):
    """Segmentation KD: U-Net teacher -> small U-Net student, pixel- and pair-wise distillation."""

    teacher: SegTeacherConfig = field(default_factory=SegTeacherConfig)
    student: SegStudentConfig = field(default_factory=SegStudentConfig)
    loss: SegKDLossConfig = field(default_factory=SegKDLossConfig)
    augment: GeometricAugmentConfig = field(default_factory=GeometricAugmentConfig)  # teacher and students


class SegStudent(nn.Module):
    """The student U-Net plus the 1x1 adapters of decoder-stage matching (training only, not deployed)."""

    def __init__(self, cfg: SegStudentConfig, teacher_widths: list[int] | None = None):
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
        student: SegStudent,
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
    """Logit maps over ``loader`` (in order, every process's share gathered: a prepared loader
    gives each process its slice), for comparing the students with the teacher."""
    model.eval()
    out = []
    for b in loader:
        with acc.autocast():
            logits = model(to_input(b["image"], mean, std)).float()
        out.append(acc.gather_for_metrics(logits).cpu())
    return torch.cat(out)


def student_arch(cfg: SegStudentConfig, adapters: bool) -> dict[str, Any]:
    return {
        "model": "unet",
        "encoder": cfg.encoder,
        "decoder_channels": list(cfg.decoder_channels),
        "adapters": adapters,
    }


@dataclass
class SegRun:
    """What the stages of one seg_unet run share: the teacher, the inputs of both models, the data."""

    r: Run
    cfg: SegUNetConfig
    enc: Encoder
    teacher: nn.Module
    t_widths: list[int] | None  # the teacher's decoder-stage widths (decoder hints on), else None
    t_inputs: Inputs
    s_inputs: Inputs
    train_set: ImageSet
    val_set: ImageSet | None
    stages: dict[str, StageResult] = field(default_factory=dict)

    @classmethod
    def start(cls, cfg: SegUNetConfig, data: PreparedData, out: Path) -> SegRun:
        from downstream.encoders import load_encoder
        from downstream.models import check_input_size

        r = start(cfg, data, out)
        size = cfg.image_size
        seed_everything(cfg.seed)
        enc = load_encoder(cfg.teacher.encoder)
        check_input_size(enc, size, True)
        if size % 32:
            raise UserError(f"image_size: a U-Net student needs a multiple of 32, got {size}")
        teacher = build_teacher(enc)
        stages = cfg.loss.feature_weight > 0
        t_widths = [b.conv2[0].out_channels for b in decoder_stages(teacher)] if stages else None
        if stages and not t_widths:
            raise UserError(
                f"loss.feature_weight: teacher '{cfg.teacher.encoder}' has no U-Net decoder stages to match "
                "(DINOv3 teachers get a single-scale head); set loss.feature_weight=0"
            )
        aug = GeometricAugment(size, cfg.augment) if cfg.augment.enabled else None
        dataset = lambda records: ImageSet(records, size, masks=True)  # noqa: E731
        val = dataset(data.parts["val"]) if data.parts["val"] else None
        t_inputs, s_inputs = Inputs(enc.mean, enc.std, aug), Inputs(IMAGENET_MEAN, IMAGENET_STD, aug)
        return cls(r, cfg, enc, teacher, t_widths, t_inputs, s_inputs, dataset(data.parts["train"]), val)

    def fit(self, task, fcfg: FitConfig, name: str, train_set: ImageSet | None = None):
        r = self.r
        return lambda: fit(
            task,
            r.loader(self.train_set if train_set is None else train_set, fcfg.batch_size, True),
            r.loader(self.val_set, fcfg.batch_size, False) if self.val_set is not None else None,
            fcfg,
            r.acc,
            name=name,
            log_dir=r.out / "tb",
        )

    def teacher_arch(self) -> dict[str, Any]:
        return {
            "model": "unet",
            "encoder": self.cfg.teacher.encoder,
            "weights": encoder_stamp(self.cfg.teacher.encoder),
        }


def stage_key(cfg: SegUNetConfig, section: SegTeacherConfig | SegStudentConfig) -> dict[str, Any]:
    """What a model's Dice + BCE stage is trained from besides the data (:func:`stage`)."""
    return {
        "train": to_dict(section.train),
        "augment": to_dict(cfg.augment),
        "seed": cfg.seed,
        "config": to_dict(section),
        "seg_loss": [cfg.loss.dice_weight, cfg.loss.bce_weight],
    }


def train_teacher(s: SegRun) -> nn.Module:
    """Fine-tune (or load) the teacher U-Net on the run's labels, then freeze it."""
    cfg = s.cfg
    if cfg.teacher.checkpoint:
        load_model(s.teacher, cfg.teacher.checkpoint, arch=s.teacher_arch(), key="teacher.checkpoint")
        check_unseen(cfg.teacher.checkpoint, s.r.prep.parts["test"])
    else:
        task = Segmentation(s.teacher, s.t_inputs, SegLoss(cfg.loss.dice_weight, cfg.loss.bce_weight))
        key = stage_key(cfg, cfg.teacher)
        s.stages["teacher"] = stage(
            s.r, "teacher", s.teacher, s.teacher_arch(), key, s.fit(task, cfg.teacher.train, "teacher")
        )
    return freeze(s.teacher.to(s.r.acc.device))


def train_students(s: SegRun, teacher: nn.Module) -> tuple[SegStudent, SegStudent]:
    """The student from scratch and distilled, from the same initial weights: only the loss differs."""
    cfg, r = s.cfg, s.r
    seed_everything(cfg.seed + 1)
    scratch = SegStudent(cfg.student)
    init = {k: v.clone() for k, v in scratch.unet.state_dict().items()}
    s_key = stage_key(cfg, cfg.student)
    seg_loss = SegLoss(cfg.loss.dice_weight, cfg.loss.bce_weight)
    task = Segmentation(scratch, s.s_inputs, seg_loss)
    s.stages["scratch"] = stage(
        r, "scratch", scratch, student_arch(cfg.student, False), s_key, s.fit(task, cfg.student.train, "scratch")
    )
    distilled = SegStudent(cfg.student, s.t_widths)
    distilled.unet.load_state_dict(init)
    unlabelled = r.prep.unlabelled if cfg.student.unlabelled else []
    kd_set = Flagged(r.prep.parts["train"], unlabelled, cfg.image_size) if unlabelled else s.train_set
    kd = SegKD(distilled, s.s_inputs, teacher, s.t_inputs, cfg.loss)
    key = {
        **s_key,
        "loss": to_dict(cfg.loss),
        "teacher": teacher_key(cfg.teacher.checkpoint, s.stages.get("teacher")),
        "unlabelled": [x.id for x in unlabelled],
    }
    arch = student_arch(cfg.student, bool(s.t_widths))
    s.stages["distilled"] = stage(
        r, "distilled", distilled, arch, key, s.fit(kd, cfg.student.train, "distilled", kd_set)
    )
    return scratch, distilled


def evaluate_all(s: SegRun, models: dict[str, tuple[nn.Module, Any, Any]]) -> dict[str, dict]:
    """Test Dice / IoU, parameters and GMACs of each model; how closely each student follows the teacher."""
    r, size = s.r, s.cfg.image_size
    test = r.acc.prepare(
        r.loader(ImageSet(r.prep.parts["test"], size, masks=True), s.cfg.student.train.batch_size, False)
    )
    results: dict[str, dict] = {}
    x = torch.zeros(1, 3, size, size)
    logits = {}
    for name, (model, mean, std) in models.items():
        model = model.to(r.acc.device)
        met = evaluate_seg(model, test, mean, std, r.acc)
        logits[name] = test_logits(model, test, mean, std, r.acc)
        met["params"] = num_params(model)
        met["gmacs"] = gmacs(model.to("cpu"), x)
        met["best_epoch"] = s.stages[name].best_epoch if name in s.stages else 0
        results[name] = met
    for name in ("scratch", "distilled"):  # how closely each student reproduces the teacher on the test split
        results[name]["teacher_dice"] = float(dice_iou(logits[name] > 0, logits["teacher"] > 0)[0].mean())
        results[name]["teacher_kl"] = float(pixel_kl(logits[name], logits["teacher"], 1.0))
    return results


class SegUNet(Recipe):
    name = "seg_unet"
    config = SegUNetConfig
    kind = "seg"
    teacher_outputs = ("logits", "last decoder map", "decoder stages (feature_weight > 0)")
    sweep_teacher = True

    def check(self, cfg: SegUNetConfig, files: bool = True) -> None:
        """The teacher's encoder given and well formed, the student's an encoder smp knows."""
        import segmentation_models_pytorch as smp
        import timm

        super().check(cfg, files)
        if files and not cfg.teacher.encoder:  # a shown preset may name it later
            raise UserError(
                "teacher.encoder: give the teacher's encoder spec, e.g. the distilled ResNet-50 export folder "
                "(in a sweep it defaults to the sweep's distilled encoder)"
            )
        name = cfg.student.encoder
        known = timm.is_model(name[3:]) if name.startswith("tu-") else name in smp.encoders.get_encoder_names()
        if not known:
            raise UserError(f"student.encoder: smp has no encoder '{name}' (its names, or tu-<timm model name>)")

    def run(self, cfg: SegUNetConfig, data: PreparedData, out: Path) -> RecipeResult:
        self.check(cfg)
        s = SegRun.start(cfg, data, out)
        teacher = train_teacher(s)
        scratch, distilled = train_students(s, teacher)
        imagenet = (IMAGENET_MEAN, IMAGENET_STD)
        results = evaluate_all(
            s,
            {
                "teacher": (teacher, s.enc.mean, s.enc.std),
                "scratch": (scratch.unet, *imagenet),
                "distilled": (distilled.unet, *imagenet),
            },
        )
        metrics = {
            "recipe": self.name,
            "data": data.source,
            "splits": {k: len(v) for k, v in data.parts.items()},
            "image_size": cfg.image_size,
            "models": results,
            "history": {k: v.history for k, v in s.stages.items()},
            "config": to_dict(cfg),
        }
        return RecipeResult(
            metrics,
            results["distilled"],
            image_deployment(distilled.unet, cfg.image_size, "seg"),  # without the training-only adapters
            teacher=results["teacher"],
            scratch=results["scratch"],
            models={"teacher": teacher, "scratch": scratch.unet, "distilled": distilled.unet},
            train_seconds=trained_seconds(s.stages.values()),
        )

    def summary_entries(self) -> list[Entry]:
        return [
            Entry(self.name, "student: U-Net on EfficientNet-Lite0", lambda: SegStudent(SegStudentConfig()).unet),
            Entry(
                self.name,
                "teacher: U-Net on ResNet-50 (the distilled export's architecture)",
                lambda: _resnet50_unet(),
            ),
        ]


def _resnet50_unet() -> nn.Module:
    import segmentation_models_pytorch as smp

    return smp.Unet("resnet50", encoder_weights=None, classes=1)


RECIPE = SegUNet()
