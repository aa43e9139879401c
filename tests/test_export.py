"""Export round trip: trainer checkpoint -> Hub folder -> timm local-dir and smp.Unet encoder."""

from __future__ import annotations

import json

import pytest
import torch
from dist.tiny_pretrain import tiny_config
from safetensors.torch import load_file

from pretrain.export import export, main, push
from pretrain.trainer import train
from sonodistill.errors import UserError


@pytest.fixture(scope="module")
def r50_run(shard_dir, tiny_teacher_dir, tmp_path_factory):
    """Two optimiser steps of the real ResNet-50 student, checkpointed by the trainer."""
    out = tmp_path_factory.mktemp("r50")
    train(
        tiny_config(
            shard_dir,
            tiny_teacher_dir,
            out,
            student__name="resnet50",
            student__head_hidden=32,
            train__max_steps=2,
            train__batch_size=2,
            train__global_batch=2,
            train__save_every=2,
        )
    )
    return out


@pytest.fixture(scope="module")
def exported(r50_run, tmp_path_factory):
    out = tmp_path_factory.mktemp("export") / "us-r50"
    export(r50_run, out)
    return out


def test_folder_contents_and_timm_config(exported, shard_dir):
    assert sorted(p.name for p in exported.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    cfg = json.loads((exported / "config.json").read_text())
    assert cfg["architecture"] == "resnet50" and cfg["num_classes"] == 0
    pc = cfg["pretrained_cfg"]
    assert pc["input_size"] == [3, 64, 64]
    assert pc["mean"] == pytest.approx([0.485, 0.456, 0.406]) and pc["std"] == pytest.approx([0.229, 0.224, 0.225])
    assert "paper_ids" not in pc and pc["license"] == "other"  # no ImageNet provenance carried over
    assert "grayscale" in cfg["input_note"]
    sd = load_file(str(exported / "model.safetensors"))
    assert not any(k.startswith(("head.", "fc.", "backbone.")) for k in sd)  # backbone only, timm names


def test_weights_equal_checkpoint_backbone_and_load_in_timm(exported, r50_run):
    import timm

    ckpt = load_file(str(r50_run / "checkpoints" / "step_00000002" / "student.safetensors"))
    model = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    assert model.num_classes == 0
    live = model.state_dict()
    backbone = {k[len("backbone.") :]: v for k, v in ckpt.items() if k.startswith("backbone.")}
    assert live.keys() == backbone.keys()
    assert all(torch.equal(live[k], backbone[k]) for k in live)
    data = timm.data.resolve_data_config(model=model)
    assert data["input_size"] == (3, 64, 64) and tuple(data["mean"]) == pytest.approx((0.485, 0.456, 0.406))
    assert model(torch.zeros(1, 3, 64, 64)).shape == (1, 2048)


def test_loads_through_transformers_automodel_as_the_same_encoder(exported):
    import timm
    from transformers import AutoModel

    wrapped = AutoModel.from_pretrained(exported).eval()  # TimmWrapperModel, the Hub page's snippet
    model = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(wrapped(pixel_values=x).pooler_output, model(x), atol=1e-5)
    assert timm.create_model(f"local-dir:{exported}", pretrained=True, num_classes=3).num_classes == 3


def test_loads_strictly_into_smp_unet_encoder(exported):
    import segmentation_models_pytorch as smp
    import timm

    unet = smp.Unet("resnet50", encoder_weights=None, classes=1).eval()
    sd = load_file(str(exported / "model.safetensors"))
    assert set(sd) == set(unet.encoder.state_dict())  # strict: same keys both ways
    unet.encoder.load_state_dict(sd, strict=True)
    model = timm.create_model(f"local-dir:{exported}", pretrained=True).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(unet.encoder(x)[-1], model.forward_features(x), atol=1e-5)
        assert unet(x).shape == (2, 1, 64, 64)


def test_model_card(exported, shard_dir):
    from huggingface_hub import ModelCard

    card = ModelCard.load(exported / "README.md")
    assert card.data.library_name == "timm" and "ultrasound" in card.data.tags
    text = card.text
    manifest = json.loads((shard_dir / "manifest.json").read_text())
    assert "Not for clinical use" in text and "Intended use" in text
    assert f"{manifest['num_samples']} images" in text
    assert all(f"| {src} | {n} |" in text for src, n in manifest["sources"].items())
    assert "2 of 2 optimiser steps" in text and "token-wise MSE" in text


def test_cli_dry_run_push_and_errors(exported, r50_run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "cli"
    main(["--checkpoint", str(r50_run), "--out", str(out), "--push-to-hub", "lab/us-r50", "--private", "--dry-run"])
    printed = capsys.readouterr().out
    assert "would create/update private model repo 'lab/us-r50'" in printed
    assert "model.safetensors" in printed and "config.json" in printed and "README.md" in printed
    from huggingface_hub import HfApi

    from sonodistill import hub

    # Offline (a compute node): a real push fails with one clear error instead of a traceback.
    monkeypatch.setattr(hub, "hub_reachable", lambda: False)
    with pytest.raises(UserError, match=r"--push-to-hub lab/us-r50: the Hub \(.*\) is not reachable from here"):
        push(out, "lab/us-r50")
    # A Hub that answers the probe but drops the upload (httpx's own error types): one line too
    monkeypatch.setattr(hub, "hub_reachable", lambda: True)

    def dropped(self, repo_id, **kw):
        raise type("ConnectError", (Exception,), {})("[Errno -2] Name or service not known")

    monkeypatch.setattr(HfApi, "create_repo", dropped)
    with pytest.raises(UserError, match=r"upload failed \(ConnectError: \[Errno -2\] Name or service not known\)"):
        push(out, "lab/us-r50")
    # The upload itself is huggingface_hub's: check we call it with the right arguments.
    calls = []

    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.append(("create", repo_id, kw)))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.append(("upload", kw["repo_id"], kw)))
    files = push(out, "lab/us-r50", private=True)
    assert files == ["README.md", "config.json", "model.safetensors"]
    assert calls[0][:2] == ("create", "lab/us-r50") and calls[0][2]["private"] is True
    assert calls[1][:2] == ("upload", "lab/us-r50") and calls[1][2]["folder_path"] == str(out)
    capsys.readouterr()
    for argv, message in (
        (
            ["--checkpoint", str(tmp_path / "nothing"), "--out", str(tmp_path / "x")],
            "neither a checkpoint folder nor a run folder",
        ),
        (
            ["--checkpoint", str(r50_run), "--out", str(tmp_path / "y"), "--private"],
            "--private: only meaningful with --push-to-hub",
        ),
        (
            ["--checkpoint", str(r50_run), "--out", str(tmp_path / "y"), "--dry-run"],
            "--dry-run: only meaningful with --push-to-hub",
        ),
        (
            ["--checkpoint", str(r50_run), "--out", str(tmp_path / "y"), "--push-to-hub", "bad repo id!!", "--dry-run"],
            "--push-to-hub bad repo id!!: not a Hub repo id",
        ),
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
