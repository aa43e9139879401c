"""The DINOv3 teacher: tiny checkpoint, token extraction parity, normalisation, layer choice, errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pretrain.teacher import main
from sonodistill.dinov3 import TINY_CONFIG, DINOv3, init_tiny
from sonodistill.errors import UserError


@pytest.fixture(scope="module")
def teacher(tiny_teacher_dir) -> DINOv3:
    return DINOv3.from_pretrained(tiny_teacher_dir)


def test_init_tiny_is_a_real_dinov3_with_processor(tiny_teacher_dir):
    from transformers import AutoImageProcessor, AutoModel

    cfg = json.loads((tiny_teacher_dir / "config.json").read_text())
    assert cfg["model_type"] == "dinov3_vit"
    assert cfg["num_register_tokens"] == 4 and cfg["hidden_size"] == 64 and cfg["patch_size"] == 16
    model = AutoModel.from_pretrained(tiny_teacher_dir)
    assert type(model).__name__ == "DINOv3ViTModel"
    proc = AutoImageProcessor.from_pretrained(tiny_teacher_dir)
    # The real DINOv3 processor normalises with ImageNet statistics.
    assert tuple(proc.image_mean) == pytest.approx((0.485, 0.456, 0.406))
    assert tuple(proc.image_std) == pytest.approx((0.229, 0.224, 0.225))


def test_init_tiny_cli_and_seed(tmp_path, capsys):
    main(["init-tiny", "--out", str(tmp_path / "a"), "--seed", "3"])
    assert "written" in capsys.readouterr().err
    init_tiny(tmp_path / "b", seed=3)
    init_tiny(tmp_path / "c", seed=4)
    a, b, c = (DINOv3.from_pretrained(tmp_path / n) for n in "abc")
    pa, pb, pc = (next(t.model.parameters()) for t in (a, b, c))
    assert torch.equal(pa, pb) and not torch.equal(pa, pc)


@pytest.mark.parametrize("size", [0, -5, 50])
def test_init_tiny_image_size_is_a_multiple_of_the_patch(tmp_path, capsys, size):
    with pytest.raises(SystemExit) as exc:
        main(["init-tiny", "--out", str(tmp_path / "t"), "--image-size", str(size)])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"error: init-tiny --image-size {size}: expected a multiple of the patch size 16 (at least that)"]
    assert not (tmp_path / "t").exists()


def test_init_tiny_never_replaces_what_it_did_not_write(tmp_path, capsys):
    """Pointed at a real teacher's folder (or an export), init-tiny would swap its weights for random ones."""
    real = tmp_path / "real"
    init_tiny(real, seed=1)
    (real / ".sonodistill-stage").unlink()  # as a downloaded save_pretrained folder looks
    before = {f.name: f.read_bytes() for f in real.iterdir()}
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "config.json").write_text("{}")
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    stage = "pretrain.teacher init-tiny"
    for out, message in (
        (real, "holds the output of a model (pretrain.export or a teacher); give " + stage + " a folder of its own"),
        (notes, f"holds files {stage} did not write; give it a new or empty folder"),
        (notes / "config.json", "is a file; expected a folder"),
        (notes / "config.json" / "t", "cannot create the folder: a file (or a broken link) is in its way"),
        (dangling, "cannot create the folder: a file (or a broken link) is in its way"),
        (Path("/proc/sonodistill"), "cannot create the folder (No such file or directory)"),  # takes no folders
    ):
        with pytest.raises(SystemExit) as exc:
            main(["init-tiny", "--out", str(out)])
        assert exc.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert err == [f"error: init-tiny --out {out}: {message}"]
    assert {f.name: f.read_bytes() for f in real.iterdir()} == before
    assert [f.name for f in notes.iterdir()] == ["config.json"] and (notes / "config.json").read_text() == "{}"
    # its own earlier output is rewritten in place, and what a killed run left (its staging folder,
    # a torn file) is replaced: nothing is left beside or inside the folder
    own = tmp_path / "own"
    init_tiny(own, seed=1)
    (own / ".init-tiny.tmp").mkdir()
    (own / ".init-tiny.tmp" / "model.safetensors").write_bytes(b"torn")
    (own / "config.json").write_text("torn")
    init_tiny(own, seed=2)
    assert not torch.equal(
        next(DINOv3.from_pretrained(own).parameters()), next(DINOv3.from_pretrained(real).parameters())
    )
    assert sorted(p.name for p in own.iterdir()) == [
        ".sonodistill-stage",
        "config.json",
        "model.safetensors",
        "preprocessor_config.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "notes", "own", "real"]


def test_init_vitb16_preset_has_the_real_dimensions(tmp_path):
    """``--preset vitb16``: a random teacher of DINOv3 ViT-B/16's size (for the paper step benchmark)."""
    main(["init-tiny", "--out", str(tmp_path / "b16"), "--preset", "vitb16", "--image-size", "256"])
    t = DINOv3.from_pretrained(tmp_path / "b16")
    assert (t.hidden_size, t.num_layers, t.patch_size, t.num_register_tokens) == (768, 12, 16, 4)
    assert t.model.config.num_attention_heads == 12 and t.model.config.intermediate_size == 3072
    assert 85e6 < sum(p.numel() for p in t.model.parameters()) < 87e6  # ViT-B/16: 86M parameters
    assert t(t.normalize(torch.rand(1, 1, 32, 32))).shape == (1, 1536, 2, 2)
    with pytest.raises(SystemExit):
        main(["init-tiny", "--out", str(tmp_path / "x"), "--preset", "vitl"])


def test_attributes(teacher):
    assert teacher.hidden_size == TINY_CONFIG["hidden_size"]
    assert teacher.patch_size == 16 and teacher.num_register_tokens == 4
    assert teacher.layers == [2, 3]  # last two of four blocks
    assert teacher.embed_dim == 2 * 64
    assert not any(p.requires_grad for p in teacher.parameters())
    teacher.train()
    assert not teacher.training and not teacher.model.training  # always eval (RoPE jitter is train-only)


def test_token_parity_with_hidden_states_and_final_norm(teacher):
    """tokens()/forward() == transformers' output_hidden_states + the final norm, indexed by hand."""
    torch.manual_seed(0)
    x = torch.randn(2, 3, 64, 96)  # non-square: checks the row-major grid reshape
    with torch.no_grad():
        ref = teacher.model(pixel_values=x, output_hidden_states=True)
    norm = teacher.model.norm
    tok = teacher.tokens(x)
    assert tok.grid == (4, 6)
    for k, block in enumerate([2, 3]):
        hs = norm(ref.hidden_states[block + 1])  # hidden_states[0] is the embedding output
        assert torch.allclose(tok.cls[k], hs[:, 0], atol=1e-6)
        assert torch.allclose(tok.registers[k], hs[:, 1:5], atol=1e-6)
        assert torch.allclose(tok.patches[k], hs[:, 5:], atol=1e-6)
    # The last block + norm is exactly the model's last_hidden_state.
    assert torch.allclose(tok.patches[1], ref.last_hidden_state[:, 5:], atol=1e-6)
    target = teacher(x)
    assert target.shape == (2, 128, 4, 6) and target.dtype == torch.float32
    for k, block in enumerate([2, 3]):
        hs = norm(ref.hidden_states[block + 1])
        for r in range(4):
            for c in range(6):
                # channel block k of grid cell (r, c) = patch token r*W + c of block k
                assert torch.allclose(target[:, k * 64 : (k + 1) * 64, r, c], hs[:, 5 + r * 6 + c], atol=1e-6)
    raw = teacher.tokens(x, norm=False)
    assert torch.allclose(raw.patches[0], ref.hidden_states[3][:, 5:], atol=1e-6)


def test_forward_matches_transformers_backbone(tiny_teacher_dir, teacher):
    """A second, independent reference: transformers' DINOv3ViTBackbone feature maps (normed)."""
    from transformers import DINOv3ViTBackbone

    backbone = DINOv3ViTBackbone.from_pretrained(tiny_teacher_dir, out_indices=[3, 4]).eval()
    x = torch.randn(3, 3, 64, 64)
    with torch.no_grad():
        ref = torch.cat(backbone(x).feature_maps, dim=1)
    assert torch.allclose(teacher(x), ref, atol=1e-5)


def test_mean_aggregation_and_layer_choices(tiny_teacher_dir):
    t = DINOv3.from_pretrained(tiny_teacher_dir, layers=[0, -1], aggregate="mean")
    assert t.layers == [0, 3] and t.embed_dim == 64
    x = torch.randn(1, 3, 32, 32)
    tok = t.tokens(x)
    expect = (tok.patches[0] + tok.patches[1]) / 2
    assert torch.allclose(t(x).flatten(2).transpose(1, 2), expect, atol=1e-6)
    assert t.resolve_layers(3) == [1, 2, 3]
    with pytest.raises(UserError, match="teacher.layers: block 4 out of range"):
        DINOv3.from_pretrained(tiny_teacher_dir, layers=[4])
    with pytest.raises(UserError, match="teacher.aggregate"):
        DINOv3.from_pretrained(tiny_teacher_dir, aggregate="max")


def test_frozen_by_default_trainable_for_fine_tuning(tiny_teacher_dir, teacher):
    x = torch.randn(2, 3, 32, 32)
    frozen = teacher(x)
    assert frozen.is_inference() and not frozen.requires_grad
    tuned = DINOv3.from_pretrained(tiny_teacher_dir, trainable=True)
    tuned.train()
    assert tuned.training and tuned.model.training
    out = tuned.eval()(x)
    assert out.requires_grad and torch.allclose(out, frozen, atol=1e-6)
    out.pow(2).mean().backward()
    assert tuned.model.embeddings.patch_embeddings.weight.grad is not None
    cls = tuned.tokens(x).cls[-1]
    assert cls.shape == (2, 64) and cls.requires_grad  # e.g. a CLS linear head on a fine-tuned ViT


def test_normalize(teacher):
    gray = torch.tensor([[0, 255], [51, 102]], dtype=torch.uint8).view(1, 1, 2, 2)
    out = teacher.normalize(gray)
    assert out.shape == (1, 3, 2, 2) and out.dtype == torch.float32
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    for c in range(3):
        assert out[0, c, 0, 1].item() == pytest.approx((1.0 - mean[c]) / std[c], abs=1e-6)
        assert out[0, c, 1, 0].item() == pytest.approx((0.2 - mean[c]) / std[c], abs=1e-6)
    assert torch.allclose(teacher.normalize(gray.float() / 255), out)
    with pytest.raises(ValueError, match=r"\[B,1,H,W\]"):
        teacher.normalize(torch.zeros(1, 3, 2, 2))


def test_bad_inputs(tmp_path, teacher, monkeypatch):
    missing = tmp_path / "no-such-teacher"
    with pytest.raises(UserError, match="teacher.name_or_path: cannot load '.*no-such-teacher'"):
        DINOv3.from_pretrained(missing)
    # A Hub id that is not in the local cache, with offline mode pinned (never a network attempt):
    # a clear error naming it.
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    with pytest.raises(UserError, match="cannot load 'sonodistill-tests/no-such-dinov3'"):
        DINOv3.from_pretrained("sonodistill-tests/no-such-dinov3")
    with pytest.raises(UserError, match="not a multiple of the patch size 16"):
        teacher.tokens(torch.zeros(1, 3, 40, 48))
    # an exported student (a timm folder) given as the teacher: one line, not transformers' TypeError
    import timm
    from timm.models import save_for_hf

    save_for_hf(timm.create_model("resnet18", pretrained=False, num_classes=0), tmp_path / "export")
    with pytest.raises(UserError, match=r"teacher.name_or_path: cannot load '.*export' with transformers AutoModel"):
        DINOv3.from_pretrained(tmp_path / "export")
