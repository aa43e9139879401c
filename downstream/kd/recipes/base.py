"""What a KD recipe is (:class:`Recipe`), what one run of it returns (:class:`RecipeResult`), its
model-size :class:`Entry` rows and its YAML preset.

A recipe is a typed component: its config (a :class:`~downstream.kd.config.RecipeConfig`), its
models and losses, and ``run(cfg, data, out)``, which trains on data already read and split
(:class:`~downstream.kd.data.PreparedData`) and returns the test metrics of its models and the
model it deploys, in memory. ``python -m downstream.kd train`` (a paper's reproduction,
:mod:`downstream.kd.papers`) and a sweep cell (:mod:`downstream.kd.cell`) both call it; the
recipes are listed by name in :mod:`downstream.kd.registry`.

A recipe's paper settings (splits, optimiser, schedule, epochs, loss weights, with the paper's own
symbols in comments) live in the preset ``downstream/kd/configs/<name>.yaml``: it is loaded first,
then any user files (e.g. ``tiny_<name>.yaml``), then ``key=value`` overrides.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal, Protocol, runtime_checkable

import torch
from torch.utils.data import Dataset

from downstream.data import ImageSet
from downstream.data.inputs import Inputs
from downstream.data.record import Catalog, Record
from downstream.kd.data import PreparedData
from sonodistill.errors import UserError

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@dataclass
class Entry:
    """One model of a recipe for ``python -m downstream.kd summary`` (built on the meta device)."""

    recipe: str
    name: str
    build: Callable[[], torch.nn.Module]
    input_shape: tuple[int, ...] = (1, 3, 224, 224)
    paper_params_m: float | None = None
    paper_gflops: float | None = None
    paper_mb: float | None = None


@dataclass
class Deployed:
    """The model a recipe deploys and how to feed it: what a sweep's edge column needs."""

    model: torch.nn.Module
    dataset: Callable[[Sequence[Record]], Dataset]  # records -> uint8 items (test split, INT8 calibration)
    prepare: Callable[[torch.Tensor], torch.Tensor]  # a uint8 batch of ``key`` -> the model's input
    key: str = "image"  # the item the model reads ("views": CSA-MoE's [B, views, 3, S, S])


def image_deployment(model: torch.nn.Module, size: int, kind: Literal["cls", "seg"]) -> Deployed:
    """A model fed ImageNet-normalised ``[B, 3, S, S]`` images (every recipe but CSA-MoE)."""
    inputs = Inputs()
    return Deployed(
        model,
        lambda records: ImageSet(records, size, masks=kind == "seg", labels=kind == "cls"),
        lambda gray: inputs(gray, train=False),
    )


@dataclass
class RecipeResult:
    """One run of a recipe: every model's test metrics and the deployed model, in memory.

    ``student`` is the deployed model's test metrics (a sweep row's score); ``teacher`` and
    ``scratch`` (the same student trained without distillation) where the recipe has them.
    ``metrics`` is the run's ``metrics.json`` (splits, every model's metrics, per-epoch history,
    the config); ``models`` every trained model by name, for a paper's figures."""

    metrics: dict[str, Any]
    student: dict[str, Any]
    deployed: Deployed
    teacher: dict[str, Any] | None = None
    scratch: dict[str, Any] | None = None
    models: dict[str, torch.nn.Module] = field(default_factory=dict)
    train_seconds: float = 0.0  # the stages trained in this run (reused stages: 0)


@runtime_checkable
class Recipe(Protocol):
    """A supervised KD recipe (subclass it: ``applies`` and the flags have defaults)."""

    name: ClassVar[str]  # the --recipe / kd:NAME name
    config: ClassVar[type]  # its config dataclass (a RecipeConfig)
    kind: ClassVar[Literal["cls", "seg"]]  # the task kind it trains: classification or segmentation
    teacher_outputs: ClassVar[tuple[str, ...]] = ("logits",)  # what its loss reads of the teacher (() = none)
    needs_masks: ClassVar[bool] = False  # every image needs a lesion mask (mask-derived inputs)
    sweep_teacher: ClassVar[bool] = False  # in a sweep, teacher.encoder defaults to the first distilled encoder

    def run(self, cfg: Any, data: PreparedData, out: Path) -> RecipeResult:
        """Train (reusing finished stages in ``out``) and evaluate on ``data``'s test split."""
        ...

    def summary_entries(self) -> list[Entry]:
        """Its models at paper size, next to the papers' reported figures."""
        ...

    def applies(self, catalog: Catalog, cfg: Any) -> str | None:
        """Why the recipe cannot run on this data (a sweep task's full catalog); ``None``: it can."""
        return None

    def check(self, cfg: Any, files: bool = True) -> None:
        """Settings its stages would refuse only once reached, refused before any data is read (one
        line naming the key): a teacher checkpoint that is not there, a teacher encoder that cannot load,
        pretrained weights out of reach. ``files=False``: the values alone (``--show-config`` prints a
        config for files and weights that may not be here yet)."""
        from downstream.encoders import check_spec

        if not files:
            return
        teacher = getattr(cfg, "teacher", None)
        path = getattr(teacher, "checkpoint", "")
        if path and not Path(path).is_file():
            raise UserError(f"teacher.checkpoint: {path} is not a file (a model.safetensors of a previous run)")
        if encoder := getattr(teacher, "encoder", ""):
            try:
                check_spec(encoder)
            except UserError as exc:
                raise UserError(f"teacher.encoder: {exc}") from None
        for name in ("teacher", "student"):  # pretrained weights that cannot be had
            if callable(check_weights := getattr(getattr(cfg, name, None), "check_weights", None)):
                check_weights(name)


def check_teacher_keys(recipe: Recipe, overrides: Sequence[str]) -> None:
    """A recipe without a teacher refuses ``teacher.*`` keys with the reason, not a list of valid keys."""
    if recipe.teacher_outputs:
        return
    given = [o.split("=", 1)[0] for o in overrides if o.strip().startswith("teacher.")]
    if given:
        raise UserError(
            f"{given[0]}: recipe '{recipe.name}' has no teacher (it trains its model with cross-entropy only); "
            "teacher.* settings do not apply to it"
        )


def preset(name: str) -> Path:
    """The paper-settings preset of recipe ``name``."""
    return CONFIGS / f"{name}.yaml"


def recipe_part(recipe: Recipe, cfg: Any) -> Any:
    """``cfg`` (a recipe's config or a subclass of it, e.g. a paper reproduction's) as the recipe's own config."""
    if type(cfg) is recipe.config:
        return cfg
    return recipe.config(**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(recipe.config)})
