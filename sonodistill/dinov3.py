"""DINOv3 loading, shared by pretraining (the frozen teacher) and downstream (a reference encoder).

The model is transformers' DINOv3 ViT loaded with ``AutoModel.from_pretrained`` (a Hub id such as
``facebook/dinov3-vitb16-pretrain-lvd1689m`` or a local ``save_pretrained`` folder), kept frozen in
eval mode and run under ``torch.inference_mode``; on GPUs it is held in bf16 (float32 where bf16 is only emulated).

Targets follow DINOv3's ``get_intermediate_layers(norm=True)``: the hidden states after the chosen
blocks, CLS and register tokens dropped, the model's final LayerNorm applied to each, then
aggregated (channel concatenation or mean) and reshaped to the patch grid ``[B, C, H/p, W/p]``.

:func:`init_tiny` (CLI: ``python -m pretrain.teacher init-tiny --out DIR``) writes a tiny
random-initialised DINOv3 (registers included) plus its image processor, so tests and the demo go
through the same ``from_pretrained`` path as the real checkpoint without any download.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from sonodistill.atomic import share_like_others
from sonodistill.errors import UserError
from sonodistill.hub import hub_reachable
from sonodistill.outdir import claim

DEFAULT_TEACHER = "facebook/dinov3-vitb16-pretrain-lvd1689m"
# Tiny DINOv3 for tests and the demo: the real architecture (RoPE, 4 registers, layer scale), small.
TINY_CONFIG = dict(
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=4,
    num_attention_heads=4,
    patch_size=16,
    num_register_tokens=4,
    image_size=64,
)

# ViT-B/16 with DINOv3's dimensions (facebook/dinov3-vitb16-pretrain-lvd1689m): a random teacher
# of the real size, to measure the paper recipe's step without downloading the weights.
VITB16_CONFIG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_hidden_layers=12,
    num_attention_heads=12,
    patch_size=16,
    num_register_tokens=4,
    image_size=224,
    layerscale_value=1e-5,
)
TEACHER_PRESETS = {"tiny": TINY_CONFIG, "vitb16": VITB16_CONFIG}

Aggregate = Literal["concat", "mean"]
INIT_TINY = "pretrain.teacher init-tiny"  # the mark of a folder init-tiny wrote (sonodistill.outdir)
STAGING = ".init-tiny.tmp"  # inside the output folder: what a kill leaves is found and replaced by the rerun


def init_tiny(out: str | Path, seed: int = 0, preset: str = "tiny", **overrides) -> Path:
    """Write a random-initialised DINOv3 ViT and its image processor to ``out``.

    ``preset``: ``tiny`` (:data:`TINY_CONFIG`, tests and the demo) or ``vitb16`` (the real
    ViT-B/16 dimensions, :data:`VITB16_CONFIG`); ``overrides`` replace its fields (any
    ``DINOv3ViTConfig`` field). The folder loads with ``AutoModel.from_pretrained(out)`` /
    ``AutoImageProcessor.from_pretrained(out)`` and therefore with :meth:`DINOv3.from_pretrained`,
    exactly like the Hub checkpoint.
    """
    if preset not in TEACHER_PRESETS:
        raise UserError(f"init-tiny --preset {preset}: expected one of {', '.join(TEACHER_PRESETS)}")
    from transformers import DINOv3ViTConfig, DINOv3ViTImageProcessor, DINOv3ViTModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    out = Path(out).expanduser()
    # a real teacher's folder or an export would get random weights: only a new, empty or own folder
    claim(out, INIT_TINY, key="init-tiny --out", write=False, only_own=True)
    cfg_kwargs = {**TEACHER_PRESETS[preset], **overrides}
    try:
        config = DINOv3ViTConfig(**cfg_kwargs)
    except (TypeError, ValueError) as exc:
        raise UserError(f"init-tiny: bad DINOv3ViTConfig override ({exc})") from None
    size = config.image_size if isinstance(config.image_size, int) else config.image_size[0]
    if size < config.patch_size or size % config.patch_size:
        raise UserError(
            f"init-tiny --image-size {size}: expected a multiple of the patch size {config.patch_size} (at least that)"
        )
    torch.manual_seed(seed)
    model = DINOv3ViTModel(config).eval()
    processor = DINOv3ViTImageProcessor(size={"height": size, "width": size})
    claim(out, INIT_TINY, key="init-tiny --out", only_own=True)  # marked first: a killed run's rerun resumes
    staging = out / STAGING
    shutil.rmtree(staging, ignore_errors=True)  # a killed run's, inside this command's own folder
    model.save_pretrained(staging)
    processor.save_pretrained(staging)
    share_like_others(staging)
    # moved in with the weights last: a folder holding model.safetensors holds a whole teacher
    for f in sorted(staging.iterdir(), key=lambda f: f.suffix == ".safetensors"):
        os.replace(f, out / f.name)
    staging.rmdir()
    return out


@dataclasses.dataclass
class Tokens:
    """Per requested block: CLS ``[B, C]``, registers ``[B, R, C]``, patches ``[B, N, C]`` (row-major grid)."""

    layers: list[int]
    cls: list[torch.Tensor]
    registers: list[torch.Tensor]
    patches: list[torch.Tensor]
    grid: tuple[int, int]


def _final_norm(model: nn.Module) -> nn.Module:
    for name in ("norm", "layernorm"):  # DINOv3 calls it ``norm``; DINOv2 ``layernorm``
        mod = getattr(model, name, None)
        if isinstance(mod, nn.Module):
            return mod
    raise UserError(f"DINOv3: {type(model).__name__} has no final norm layer ('norm' or 'layernorm')")


class DINOv3(nn.Module):
    """A (frozen by default) DINOv3 ViT producing patch-grid targets ``[B, embed_dim, H/p, W/p]``.

    Build it with :meth:`from_pretrained`. ``forward`` takes the normalised 3-channel view
    (see :meth:`normalize`), which is also what the student receives. ``tokens`` exposes CLS,
    register and patch tokens of any blocks (for linear heads and segmentation heads downstream).
    """

    def __init__(
        self,
        model: nn.Module,
        mean: Sequence[float],
        std: Sequence[float],
        layers: Sequence[int] = (-2, -1),
        norm: bool = True,
        aggregate: Aggregate = "concat",
        name_or_path: str = "",
        trainable: bool = False,
        key: str = "teacher",
    ) -> None:
        super().__init__()
        self.key = key  # the config section named in error messages
        cfg = model.config
        self.trainable = bool(trainable)
        self.model = model if trainable else model.eval().requires_grad_(False)
        self.name_or_path = name_or_path
        patch = cfg.patch_size
        self.patch_size = int(patch if isinstance(patch, int) else patch[0])
        self.hidden_size = int(cfg.hidden_size)
        self.num_register_tokens = int(getattr(cfg, "num_register_tokens", 0) or 0)
        self.num_layers = int(cfg.num_hidden_layers)
        self.layers = self.resolve_layers(layers)
        self.norm = bool(norm)
        if aggregate not in ("concat", "mean"):
            raise UserError(f"{key}.aggregate: expected 'concat' or 'mean', got {aggregate!r}")
        self.aggregate = aggregate
        self.embed_dim = self.hidden_size * (len(self.layers) if aggregate == "concat" else 1)
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        if len(self.mean) != 3 or len(self.std) != 3:
            raise UserError(f"{key} {name_or_path}: image processor mean/std must have 3 values")
        self._final_norm = _final_norm(model)
        self.register_buffer("_mean", torch.tensor(self.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("_std", torch.tensor(self.std).view(1, 3, 1, 1), persistent=False)

    # -- construction -----------------------------------------------------------------------
    @classmethod
    def from_pretrained(
        cls,
        name_or_path: str | Path = DEFAULT_TEACHER,
        layers: Sequence[int] = (-2, -1),
        norm: bool = True,
        aggregate: Aggregate = "concat",
        dtype: torch.dtype | None = None,
        trainable: bool = False,
        key: str = "teacher",
    ) -> DINOv3:
        """Load a DINOv3 checkpoint (Hub id or local folder) and its image-processor statistics.

        Frozen by default (eval, no gradients, ``inference_mode``): the distillation teacher and
        linear probes. ``trainable=True`` keeps gradients and train/eval switching, for fine-tuning
        the ViT downstream.

        Raises :class:`UserError` naming ``name_or_path`` when it does not load (with
        ``HF_HUB_OFFLINE=1``, or where the Hub does not answer, a Hub id loads from the local cache
        only, without huggingface_hub's retries).
        """
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import logging as hf_logging

        name = str(name_or_path)
        hf_logging.disable_progress_bar()
        cache_only = not Path(name).expanduser().is_dir() and not hub_reachable()
        try:
            model = AutoModel.from_pretrained(name, dtype=dtype, local_files_only=cache_only)
        except (
            OSError,
            ValueError,
            TypeError,
        ) as exc:  # TypeError: a timm folder (an export) read as a transformers one
            reason = " ".join(str(exc).split())[:300]
            if cache_only:  # transformers' own text would only repeat this and point at the network
                reason = "not in the local cache, and the Hub is not reachable from here"
            raise UserError(
                f"{key}.name_or_path: cannot load '{name}' with transformers AutoModel ({reason}); "
                "give a local save_pretrained folder or a Hub id reachable from here "
                "(`python -m pretrain.teacher init-tiny --out DIR` makes a tiny one)"
            ) from None
        if not hasattr(model.config, "patch_size") or not hasattr(model.config, "hidden_size"):
            raise UserError(f"{key}.name_or_path: '{name}' is a {type(model).__name__}, not a ViT with patches")
        try:
            proc = AutoImageProcessor.from_pretrained(name, local_files_only=cache_only)
            mean, std = proc.image_mean, proc.image_std
        except (OSError, ValueError):
            raise UserError(
                f"{key}.name_or_path: '{name}' has no image processor config (preprocessor_config.json); "
                "the teacher's normalisation statistics come from it"
            ) from None
        return cls(
            model,
            mean,
            std,
            layers=layers,
            norm=norm,
            aggregate=aggregate,
            name_or_path=name,
            trainable=trainable,
            key=key,
        )

    def provenance(self) -> dict:
        """How a model card may name this model: Hub id (and resolved commit) or, for a local folder,
        its model type and the SHA-256 of its weights (:mod:`sonodistill.provenance`)."""
        from sonodistill.provenance import model_provenance

        cfg = self.model.config
        return model_provenance(self.name_or_path, cfg.model_type, getattr(cfg, "_commit_hash", None))

    def resolve_layers(self, layers: Sequence[int] | int) -> list[int]:
        """Block indices (0-based; negative counts from the last block); an int n means the last n."""
        if isinstance(layers, int):
            if not 1 <= layers <= self.num_layers:
                raise UserError(f"{self.key}.layers: need 1..{self.num_layers} last blocks, got {layers}")
            return list(range(self.num_layers - layers, self.num_layers))
        out = []
        for i in layers:
            if not -self.num_layers <= int(i) < self.num_layers:
                raise UserError(
                    f"{self.key}.layers: block {i} out of range for a {self.num_layers}-block model "
                    f"(valid: 0..{self.num_layers - 1} or -{self.num_layers}..-1)"
                )
            out.append(int(i) % self.num_layers)
        if not out:
            raise UserError(f"{self.key}.layers: give at least one block index")
        return out

    def train(self, mode: bool = True) -> DINOv3:
        # A frozen teacher stays in eval: DINOv3 randomly rescales RoPE coordinates in train mode.
        return super().train(mode and self.trainable)

    # -- inputs -------------------------------------------------------------------------------
    def normalize(self, gray: torch.Tensor) -> torch.Tensor:
        """Grayscale ``[B,1,H,W]`` (uint8, or float in [0,1]) -> 3 replicated channels, normalised."""
        if gray.ndim != 4 or gray.shape[1] != 1:
            raise ValueError(f"expected grayscale images [B,1,H,W], got {tuple(gray.shape)}")
        x = gray.float() / 255.0 if gray.dtype == torch.uint8 else gray.float()
        return (x.expand(-1, 3, -1, -1) - self._mean) / self._std

    def grid(self, height: int, width: int) -> tuple[int, int]:
        return height // self.patch_size, width // self.patch_size

    # -- outputs ------------------------------------------------------------------------------
    def tokens(self, x: torch.Tensor, layers: Sequence[int] | int | None = None, norm: bool | None = None) -> Tokens:
        """CLS, register and patch tokens after each requested block (final norm applied if ``norm``)."""
        idx = self.layers if layers is None else self.resolve_layers(layers)
        norm = self.norm if norm is None else norm
        h, w = x.shape[-2:]
        if h % self.patch_size or w % self.patch_size:
            raise UserError(f"{self.key}: image size {h}x{w} is not a multiple of the patch size {self.patch_size}")
        dtype = next(self.model.parameters()).dtype
        with torch.inference_mode(not self.trainable):
            out = self.model(pixel_values=x.to(dtype), output_hidden_states=True)
            return self._select(out.hidden_states, idx, norm, (h, w))

    def _select(self, states, idx: list[int], norm: bool, size: tuple[int, int]) -> Tokens:
        # states = [embeddings output, block 0, ..., block L-1]
        prefix = 1 + self.num_register_tokens
        cls_t, reg_t, patch_t = [], [], []
        for i in idx:
            hs = states[i + 1]
            if norm:
                hs = self._final_norm(hs)
            cls_t.append(hs[:, 0])
            reg_t.append(hs[:, 1:prefix])
            patch_t.append(hs[:, prefix:])
        return Tokens(idx, cls_t, reg_t, patch_t, self.grid(*size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Distillation targets ``[B, embed_dim, H/p, W/p]`` in float32."""
        with torch.inference_mode(not self.trainable):
            tok = self.tokens(x)
            feats = torch.cat(tok.patches, dim=-1) if self.aggregate == "concat" else torch.stack(tok.patches).mean(0)
            b, n, c = feats.shape
            gh, gw = tok.grid
            return feats.float().transpose(1, 2).reshape(b, c, gh, gw)
