"""The settings every KD recipe shares, under the names every stage uses.

:class:`RecipeConfig` is the base of each recipe's config: the knobs every stage names alike
(``image_size``, ``num_workers``, ``seed``, ``mixed_precision``, at the top level as in pretraining
and downstream) and the data settings of a downstream run (``split``, ``reader``), plus the
recipe's class subset. Until issue 15 they sat under ``data.*`` (``data.img_size``,
``data.workers``, ...); those keys still work, with a warning naming the new one. Also here: the
papers' geometric augmentation (:class:`FlipRotateConfig`, HDKD's teacher and CSA-MoE) and what the
two logit-KD recipes with a timm student share (:class:`LogitKDConfig`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, ClassVar

from downstream.data.read import ReaderConfig
from downstream.fit import check_stages
from downstream.kd.losses import LogitKDLoss, LogitLossConfig
from downstream.kd.models.backbones import TimmStudentConfig
from downstream.splits import SplitConfig
from sonodistill.errors import UserError
from sonodistill.precision import MixedPrecision


@dataclass
class RecipeConfig:
    """What every KD recipe shares: the knobs named alike in every stage and the data settings."""

    RENAMED: ClassVar[dict[str, str]] = {
        "data.img_size": "image_size",
        "data.workers": "num_workers",
        "data.split": "split",
        "data.reader": "reader",
        "data.classes": "classes",
        "data.subset": "subset",
    }

    image_size: int = 224  # side of the square images every model sees, pixels
    num_workers: int = 2  # image-decoding worker processes (capped at the cores this process may use)
    seed: int = 42  # model initialisation and training order of every stage (each stage derives its own)
    mixed_precision: MixedPrecision = "auto"  # auto: bf16 on GPUs, fp32 on CPU
    split: SplitConfig = field(default_factory=SplitConfig)
    reader: ReaderConfig = field(default_factory=ReaderConfig)
    classes: list[str] = field(default_factory=list)  # keep these classes, in this label order ([] = all)
    subset: str = ""  # a subset.json of downstream.run: train on its "train" ids only ("" = the whole split)


@dataclass
class FlipRotateConfig:
    """A paper's geometric augmentation: random flips and rotation (kornia, batched on the device)."""

    hflip: float = 0.5  # probability of a horizontal flip
    vflip: float = 0.0  # probability of a vertical flip
    degrees: float = 0.0  # rotation range +- degrees (0 = off)

    def check(self, key: str) -> None:
        for name in ("hflip", "vflip"):
            if not 0 <= (p := getattr(self, name)) <= 1:
                raise UserError(f"{key}.{name}: expected a probability from 0 to 1, got {p}")
        if not 0 <= self.degrees <= 180:
            raise UserError(f"{key}.degrees: expected a rotation range from 0 to 180 degrees, got {self.degrees}")


@dataclass
class LogitKDConfig(RecipeConfig):
    """A logit-distillation recipe with a timm student (vit_mobilenet, nanoray); each adds its teacher."""

    student: TimmStudentConfig = field(default_factory=TimmStudentConfig)
    loss: LogitLossConfig = field(default_factory=LogitLossConfig)


def check_recipe(cfg: Any, prefix: str = "") -> None:
    """A recipe config's values no stage runs with (:func:`downstream.fit.check_stages`), its logit
    losses' weights and temperature, and what each part's own ``check(key)`` refuses (a timm name,
    a probability, a width), one line naming the key, before any data is read."""
    if not prefix:
        check_stages(cfg)
        classes = getattr(cfg, "classes", [])
        if classes and (len(classes) < 2 or len(set(classes)) != len(classes)):
            raise UserError(f"classes: expected two or more distinct classes to tell apart, got {list(classes)}")
        if getattr(cfg, "num_workers", 0) < 0:
            raise UserError(f"num_workers: expected 0 (load in the main process) or more, got {cfg.num_workers}")
    for f in dataclasses.fields(cfg):
        value, key = getattr(cfg, f.name), prefix + f.name
        if isinstance(value, LogitLossConfig):
            LogitKDLoss.from_config(value, key)
        elif dataclasses.is_dataclass(value):
            if callable(check := getattr(value, "check", None)):
                check(key)
            check_recipe(value, key + ".")
