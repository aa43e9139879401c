"""Encoder specs, task models, the frozen-encoder guarantee and the feature cache."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from downstream.config import ProbeConfig, RunConfig
from downstream.encoders import check_spec, load_encoder
from downstream.models import build_classifier, build_segmenter
from downstream.probe import FeatureCache, train_linear_probe
from downstream.runner import run
from sonodistill.errors import UserError

TEACHER_MEAN, TEACHER_STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def save_encoder(out: Path, arch: str = "resnet18", seed: int = 0) -> Path:
    """A folder in pretrain.export's format (timm save_for_hf + the teacher's mean/std), random weights.
    Shared by the downstream test modules (imported from here)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    data_config = {
        "input_size": (3, 64, 64),
        "mean": TEACHER_MEAN,
        "std": TEACHER_STD,
        "crop_pct": 1.0,
        "interpolation": "bilinear",
    }
    save_for_hf(
        timm.create_model(arch, num_classes=0),
        out,
        model_config={"sonodistill": {"step": 0}},
        data_config=data_config,
        safe_serialization=True,
    )
    return out


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny CPU models: one intra-op thread is as fast and immune to oversubscription on shared cores."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> Path:
    return save_encoder(tmp_path_factory.mktemp("export"), "resnet18", seed=1)


def test_specs_and_normalisation(export_dir):
    enc = load_encoder("rand")
    # ResNet-50 is 25.557M with its 1000-class fc (2048*1000 + 1000); the backbone alone 23.508M
    assert (
        enc.arch == "resnet50" and enc.num_features == 2048 and enc.params_m == pytest.approx(25.557 - 2.049, abs=1e-3)
    )
    assert enc.mean == pytest.approx((0.485, 0.456, 0.406)) and enc.std == pytest.approx((0.229, 0.224, 0.225))
    exp = load_encoder(str(export_dir))
    ref = load_file(str(export_dir / "model.safetensors"))
    assert exp.arch == "resnet18" and exp.mean == TEACHER_MEAN and exp.std == TEACHER_STD  # the folder's own stats
    for k, v in exp.backbone.state_dict().items():
        assert torch.equal(v, ref[k]), k
    assert load_encoder(f"local-dir:{export_dir}").fingerprint() == exp.fingerprint()
    torch.manual_seed(0)
    a = load_encoder("rand:resnet18").fingerprint()
    torch.manual_seed(0)
    assert load_encoder("rand:resnet18").fingerprint() == a != exp.fingerprint()


@pytest.mark.parametrize(
    "spec, message",
    [
        ("bogus", r"unknown encoder spec .*valid forms: rand; rand:NAME; timm:NAME"),
        ("timm:resnet50", r"not in the local cache .*offline"),
        ("hf-hub:nobody/none", r"cannot fetch it from the Hub"),
        ("rand:no_such_net", r"timm has no architecture 'no_such_net'"),
        ("dinov3:/no/such/dir", r"encoder 'dinov3:/no/such/dir': /no/such/dir is not a folder"),
    ],
)
def test_bad_specs(spec, message):
    with pytest.raises(UserError, match=message):
        load_encoder(spec)


def test_timm_vits_take_any_multiple_of_their_patch():
    """A timm ViT is built at 224 px; downstream runs at image_size: its position embedding is
    resampled (timm's dynamic_img_size), and a size off the patch grid is one line, not an assert."""
    import timm

    from downstream.models import check_input_size

    torch.manual_seed(0)
    vit = load_encoder("rand:vit_tiny_patch16_224")
    assert vit.patch_size == 16
    torch.manual_seed(0)
    ref = timm.create_model("vit_tiny_patch16_224", num_classes=0).eval()
    vit.backbone.eval()
    x = torch.rand(2, 3, 224, 224)
    with torch.no_grad():
        assert torch.allclose(vit.backbone(x), ref(x), atol=1e-5)  # the same model at its own size
        assert vit.backbone(torch.rand(2, 3, 64, 96)).shape == (2, 192)
    check_input_size(vit, 64, segmentation=False)
    with pytest.raises(UserError, match="image_size: 40 is not a multiple of the encoder's patch size 16"):
        check_input_size(vit, 40, segmentation=False)
    assert load_encoder("rand:resnet18").patch_size is None


def test_weights_not_matching_architecture(tmp_path, export_dir):
    bad = save_encoder(tmp_path / "bad", "resnet34")
    cfg = json.loads((bad / "config.json").read_text())
    cfg["architecture"] = "resnet18"  # config says resnet18, weights are resnet34
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(UserError, match=r"weights do not match the architecture"):
        load_encoder(str(bad))
    nocfg = tmp_path / "nocfg"
    nocfg.mkdir()
    with pytest.raises(UserError, match="has no config.json"):
        load_encoder(str(nocfg))
    with pytest.raises(UserError, match="the folder is missing after 'local-dir:'"):
        check_spec("local-dir:")  # not the working directory
    with pytest.raises(UserError, match="encoder '': empty spec; valid forms: "):
        check_spec("")


def test_a_transformers_folder_given_as_a_timm_export_is_named_before_any_cell(tiny_teacher_dir):
    with pytest.raises(UserError) as exc:
        check_spec(str(tiny_teacher_dir))  # the DINOv3 teacher folder: its config has a model_type
    assert "config.json names no timm architecture" in str(exc.value)
    assert str(exc.value).endswith(f"a dinov3_vit model folder: give it as dinov3:{tiny_teacher_dir}")


def test_unet_gets_encoder_weights_strictly(export_dir):
    enc = load_encoder(str(export_dir))
    unet = build_segmenter(enc)
    sd = enc.backbone.state_dict()
    got = unet.encoder.state_dict()
    assert set(got) == set(sd)
    assert all(torch.equal(got[k], sd[k]) for k in sd)
    assert unet(torch.zeros(1, 3, 64, 64)).shape == (1, 1, 64, 64)
    # other timm backbones go through smp's tu- encoders with the same weights
    torch.manual_seed(0)
    small = load_encoder("rand:mobilenetv3_small_050")
    tu = build_segmenter(small)
    assert torch.equal(tu.encoder.model.conv_stem.weight, small.backbone.conv_stem.weight)
    assert build_classifier(small, 3)(torch.zeros(2, 3, 64, 64)).shape == (2, 3)


def _tensors(sd: dict, prefix: str) -> dict:
    return {k[len(prefix) :]: v for k, v in sd.items() if k.startswith(prefix)}


@pytest.mark.parametrize("mode", ["linear", "finetune"])
def test_linear_probe_leaves_encoder_untouched(mode, busi_dir, export_dir, tmp_path):
    cfg = RunConfig(
        task="busi-seg", data=str(busi_dir), encoder=str(export_dir), mode=mode, out=str(tmp_path / mode), image_size=32
    )
    cfg.train.epochs, cfg.train.batch_size, cfg.num_workers, cfg.train.lr = 1, 8, 0, 1e-2
    cfg.edge.enabled = False  # the edge column is tested in test_edge.py / test_downstream_sweep.py
    run(cfg)
    best = load_file(str(tmp_path / mode / "best.safetensors"))
    after = _tensors(best, "encoder.")
    before = load_file(str(export_dir / "model.safetensors"))
    assert set(after) == set(before)  # parameters AND buffers (BatchNorm running stats, counters)
    changed = [k for k in before if not torch.equal(after[k], before[k])]
    if mode == "linear":
        assert changed == []
    else:
        assert any("running_mean" in k for k in changed) and any(k.endswith("conv1.weight") for k in changed)
    assert not torch.equal(
        best["decoder.blocks.0.conv1.0.weight"], torch.zeros_like(best["decoder.blocks.0.conv1.0.weight"])
    )


def test_dinov3_linear_probe_frozen(busi_dir, tiny_teacher_dir, tmp_path):
    from safetensors.torch import load_file as lf

    cfg = RunConfig(
        task="busi-seg",
        data=str(busi_dir),
        encoder=f"dinov3:{tiny_teacher_dir}",
        mode="linear",
        out=str(tmp_path / "d"),
        image_size=64,
    )
    cfg.train.epochs, cfg.train.batch_size, cfg.num_workers = 1, 8, 0
    cfg.edge.enabled = False
    m = run(cfg)
    assert 0.0 <= m["test"]["dice"] <= 1.0
    from transformers import AutoModel

    ref = AutoModel.from_pretrained(str(tiny_teacher_dir)).state_dict()
    got = _tensors(lf(str(tmp_path / "d" / "best.safetensors")), "encoder.vit.")
    assert set(ref) == set(got) and all(torch.equal(got[k], ref[k]) for k in ref)
    assert any(k.startswith("head.") for k in lf(str(tmp_path / "d" / "best.safetensors")))


def test_linear_probe_head_and_folding():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(90, 5, generator=g) * torch.tensor([10.0, 1, 1, 1, 1]) + 3
    y = (x[:, 1] > 0).long() + (x[:, 2] > 1).long()  # 3 classes, linearly separable-ish
    res = train_linear_probe(x[:60], y[:60], x[60:], y[60:], 3, ProbeConfig(epochs=150, lr=0.05, batch_size=32), seed=0)
    assert res.best_val_accuracy == max(h["val_accuracy"] for h in res.history)
    assert res.best_val_accuracy >= 0.85
    # the folded head on raw features reproduces the validation accuracy it was selected for
    acc = (res.head(x[60:]).argmax(1) == y[60:]).float().mean().item()
    assert acc == pytest.approx(res.best_val_accuracy)
    again = train_linear_probe(
        x[:60], y[:60], x[60:], y[60:], 3, ProbeConfig(epochs=150, lr=0.05, batch_size=32), seed=0
    )
    assert torch.equal(again.head.weight, res.head.weight)


def test_feature_cache_hits_and_keys(busi_dir, export_dir, tmp_path):
    from downstream.data import read_busi

    cat = read_busi(busi_dir, require_masks=False)
    enc = load_encoder(str(export_dir))
    cache = FeatureCache(tmp_path / "c")
    a = cache.get(enc, cat.records, cat.fingerprint(), 64, num_workers=0)
    assert cache.misses == 1 and len(a) == len(cat) and len(list((tmp_path / "c").glob("*.pt"))) == 1
    b = cache.get(enc, cat.records, cat.fingerprint(), 64, num_workers=0)
    assert cache.misses == 1 and cache.hits == 1 and all(torch.equal(a[k], b[k]) for k in a)
    disk = FeatureCache(tmp_path / "c").get(enc, cat.records, cat.fingerprint(), 64, num_workers=0)
    assert all(torch.equal(a[k], disk[k]) for k in a)
    # features equal a direct forward pass of the eval-mode encoder
    from downstream.data import ImageSet, to_input

    item = ImageSet(cat.records[:2], 64)[1]
    with torch.no_grad():
        direct = enc.backbone.eval()(to_input(item["image"][None], enc.mean, enc.std))[0]
    assert torch.allclose(direct, a[cat.records[1].id], atol=1e-5)
    cache.get(enc, cat.records, cat.fingerprint(), 96, num_workers=0)  # other preprocessing -> other key
    assert cache.misses == 2


def test_every_trainable_dinov3_parameter_gets_a_gradient(tiny_teacher_dir):
    """DistributedDataParallel stops on the second step when a trainable parameter got no gradient
    (DINOv3's mask token is used only with a pixel mask): fine-tuning must train only what it uses."""
    from downstream.encoders import load_encoder

    enc = load_encoder(f"dinov3:{tiny_teacher_dir}")
    out = enc.backbone(torch.randn(2, 3, 64, 64))
    out.float().pow(2).mean().backward()
    trainable = {n: p for n, p in enc.backbone.named_parameters() if p.requires_grad}
    assert trainable and [n for n, p in trainable.items() if p.grad is None] == []
    assert not enc.backbone.vit.embeddings.mask_token.requires_grad


def test_features_extracted_under_another_precision_are_another_cache_entry(tmp_path):
    """A sweep part on a GPU (bf16 autocast) and one on a CPU must not read each other's features."""
    from PIL import Image

    from downstream.data.record import Record
    from downstream.encoders import load_encoder
    from downstream.probe import FeatureCache, cache_key

    enc = load_encoder("rand:resnet18")
    keys = {p: cache_key(enc, "catalog", 64, p) for p in ("no", "bf16", "fp16")}
    assert len(set(keys.values())) == 3 and keys["no"] == cache_key(enc, "catalog", 64)

    class Acc:  # what FeatureCache reads of an accelerator
        mixed_precision, device, is_main_process = "bf16", torch.device("cpu"), True

        def prepare_data_loader(self, loader):
            return loader

        def autocast(self):
            return torch.autocast("cpu", dtype=torch.bfloat16)

        def gather_for_metrics(self, x):
            return x

    img = tmp_path / "a.png"
    Image.new("L", (40, 40), 90).save(img)
    FeatureCache(tmp_path / "cache").get(enc, [Record(id="a", image=str(img))], "catalog", 64, accelerator=Acc())
    assert [p.stem for p in (tmp_path / "cache").glob("*.pt")] == [keys["bf16"]]
