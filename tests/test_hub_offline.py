"""A node that cannot reach the Hub: specs and teachers load from the local cache at once or fail in
one line, without huggingface_hub's five retries (about 25 s and a screen of warnings per file).

Offline mode is switched off here and the Hub endpoint pointed at a local port, so no test depends
on whether this machine has a network: a closed port is a Hub that does not answer, and any other
host name fails to resolve (a request that got past the probe would go to huggingface.co, whose
address huggingface_hub fixes at import; its retries, logged, fail the test)."""

from __future__ import annotations

import http.server
import logging
import socket
import threading
from pathlib import Path

import huggingface_hub.constants as hub_constants
import pytest
import torch
from safetensors.torch import save_file

from downstream.encoders import check_spec, load_encoder
from downstream.kd.models.backbones import create
from sonodistill import hub
from sonodistill.dinov3 import DINOv3, init_tiny
from sonodistill.errors import UserError


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture()
def no_hub(monkeypatch, tmp_path) -> Path:
    """Online mode, a Hub that refuses connections and an empty cache (returned); the probe asked afresh."""
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{_closed_port()}")
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for var in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    # no request past the probe reaches the network, whatever this machine has: any name but the
    # loopback fails to resolve at once (the code under test must not need it; its tests say so)
    resolve = socket.getaddrinfo

    def loopback_only(host, *args, **kwargs):
        if host not in ("127.0.0.1", "localhost"):
            raise socket.gaierror(socket.EAI_NONAME, f"{host}: no network in this test")
        return resolve(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", loopback_only)
    hub.hub_reachable.cache_clear()
    yield tmp_path / "hub"
    hub.hub_reachable.cache_clear()


def _cache(root: Path, repo: str, files: dict[str, bytes | Path]) -> None:
    """Files in huggingface_hub's cache layout, as an earlier download leaves them."""
    snap = root / f"models--{repo.replace('/', '--')}" / "snapshots" / ("0" * 40)
    snap.mkdir(parents=True)
    (snap.parents[1] / "refs").mkdir()
    (snap.parents[1] / "refs" / "main").write_text("0" * 40)
    for name, data in files.items():
        (snap / name).write_bytes(data if isinstance(data, bytes) else Path(data).read_bytes())


class _Hub(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        """Quiet: a request line per probe on stderr says nothing the assertions do not."""


def test_probe_asks_for_an_http_answer(no_hub, monkeypatch):
    assert hub.hub_reachable() is False  # refused
    monkeypatch.setattr(hub, "PROBE_TIMEOUT_S", 0.5)
    with socket.socket() as silent:  # accepts the connection, never answers (a firewall that swallows it)
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{silent.getsockname()[1]}")
        hub.hub_reachable.cache_clear()
        assert hub.hub_reachable() is False
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setattr(hub_constants, "ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
        assert hub.hub_reachable() is False  # asked once per process
        hub.hub_reachable.cache_clear()
        assert hub.hub_reachable() is True  # answers
        hub.hub_reachable.cache_clear()
        monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
        assert hub.hub_reachable() is False  # offline mode: never asked
    finally:
        server.shutdown()
        server.server_close()


def test_uncached_specs_fail_in_one_line_without_retries(no_hub, caplog):
    with caplog.at_level(logging.WARNING):
        with pytest.raises(UserError, match=r"'resnet18' are not in the local cache and the Hub is not reachable"):
            load_encoder("timm:resnet18")
        with pytest.raises(UserError, match=r"encoder 'hf-hub:nobody/none': cannot fetch it from the Hub"):
            load_encoder("hf-hub:nobody/none")
        # what a sweep and embed check before their first cell / shard, without loading anything
        with pytest.raises(
            UserError, match=r"encoder 'dinov3:nobody/no-dinov3': 'nobody/no-dinov3' is not in the local"
        ):
            check_spec("dinov3:nobody/no-dinov3")
        with pytest.raises(UserError, match=r"encoder 'hf-hub:nobody/none': cannot fetch it from the Hub"):
            check_spec("hf-hub:nobody/none")
        with pytest.raises(UserError, match=r"not in the local cache, and the Hub is not reachable from here"):
            DINOv3.from_pretrained("nobody/no-dinov3")
        with pytest.raises(UserError, match=r"pretrained weights for 'gcvit_xxtiny' are not in the local cache"):
            load_encoder("timm:gcvit_xxtiny")  # weights behind a URL: torch.hub's cache, not the Hub's
        with pytest.raises(UserError, match=r"student.model: pretrained weights for 'resnet18' are not in the local"):
            create("resnet18", pretrained=True, key="student.model", num_classes=3)
    assert not [r.getMessage() for r in caplog.records if "Retry" in r.getMessage()]


def test_cached_weights_load_straight_from_the_cache(no_hub, tmp_path, caplog):
    import timm
    from timm.models import get_pretrained_cfg, save_for_hf

    torch.manual_seed(3)
    ref = timm.create_model("resnet18", pretrained=False, num_classes=0)
    _cache(no_hub, get_pretrained_cfg("resnet18").hf_hub_id, {"model.safetensors": b""})
    save_file(ref.state_dict(), next(no_hub.rglob("model.safetensors")))
    save_for_hf(ref, tmp_path / "hf")
    _cache(no_hub, "lab/r18", {f.name: f for f in (tmp_path / "hf").iterdir()})
    url_weights = timm.create_model("gcvit_xxtiny", pretrained=False, num_classes=0)
    url = get_pretrained_cfg("gcvit_xxtiny").url
    (tmp_path / "torch-hub" / "checkpoints").mkdir(parents=True)
    torch.save(url_weights.state_dict(), tmp_path / "torch-hub" / "checkpoints" / Path(url).name)
    init_tiny(tmp_path / "teacher", seed=5)
    _cache(no_hub, "lab/dinov3", {f.name: f for f in (tmp_path / "teacher").iterdir() if f.suffix})
    with caplog.at_level(logging.WARNING):
        for spec in ("timm:resnet18", "hf-hub:lab/r18"):
            got = load_encoder(spec).backbone.state_dict()
            assert all(torch.equal(v, got[k]) for k, v in ref.state_dict().items()), spec
        teacher = DINOv3.from_pretrained("lab/dinov3")
        check_spec("dinov3:lab/dinov3")  # in the cache: in reach without the Hub
        student = create("resnet18", pretrained=True, num_classes=0).state_dict()  # a KD recipe's backbone
        from_url = load_encoder("timm:gcvit_xxtiny").backbone.state_dict()
    assert all(torch.equal(v, from_url[k]) for k, v in url_weights.state_dict().items())
    assert all(torch.equal(v, student[k]) for k, v in ref.state_dict().items())
    local = DINOv3.from_pretrained(tmp_path / "teacher")
    assert all(torch.equal(a, b) for a, b in zip(teacher.parameters(), local.parameters()))
    assert not [r.getMessage() for r in caplog.records if "Retry" in r.getMessage()]


def test_hub_datasets_load_straight_from_the_cache(no_hub, tmp_path, monkeypatch, caplog):
    import datasets
    import numpy as np
    from PIL import Image

    from downstream.data.hub import read_hub
    from shards.sources import DatasetSource

    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    rng = np.random.default_rng(0)
    for i in range(6):
        folder = tmp_path / "busi" / ("benign", "malignant")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 255, (24, 32), dtype=np.uint8)).save(folder / f"{i}.png")
    # what an earlier download of a Hub dataset 'lab/busi' leaves: its Arrow table under the repo's name
    built = datasets.load_dataset_builder("imagefolder", data_dir=str(tmp_path / "busi"), cache_dir=str(tmp_path / "b"))
    built.download_and_prepare()
    cached = tmp_path / "datasets" / "lab___busi" / "default" / "0.0.0" / ("0" * 40)
    cached.mkdir(parents=True)
    (cached / "dataset_info.json").write_bytes((Path(built.cache_dir) / "dataset_info.json").read_bytes())
    (cached / "busi-train.arrow").write_bytes((Path(built.cache_dir) / "imagefolder-train.arrow").read_bytes())
    with caplog.at_level(logging.WARNING):
        catalog = read_hub("hf:lab/busi")
        assert sorted(catalog.classes[r.label] for r in catalog.records) == ["benign"] * 3 + ["malignant"] * 3
        assert len(DatasetSource("busi", "hf:lab/busi").ds) == 6
        with pytest.raises(
            UserError,
            match=r"^hf:lab/none: not in the local datasets cache, and the Hub is not reachable$",
        ):
            read_hub("hf:lab/none")
        with pytest.raises(UserError, match=r"'lab/none' is not in the datasets cache, and the Hub is not reachable$"):
            DatasetSource("x", "hf:lab/none")
    assert not datasets.config.HF_HUB_OFFLINE and not hub_constants.HF_HUB_OFFLINE  # restored after each load
    assert not [r.getMessage() for r in caplog.records if "Retry" in r.getMessage()]


def test_pretrained_kd_weights_out_of_reach_are_refused_before_any_data_but_shown(no_hub, busi_dir, tmp_path, capsys):
    """kd train refuses a pretrained student it cannot load before the teacher trains for nothing;
    --show-config, which may print a config for another machine, shows it."""
    from test_kd_recipes import fails

    out = tmp_path / "o"
    err = fails("nanoray", busi_dir, out, capsys, "student.pretrained=true")
    assert err.startswith("error: student.model: pretrained weights for 'mobilenetv3_small_100' are not in the local")
    assert not out.exists()
    err = fails("vit_mobilenet", busi_dir, out, capsys, "teacher.pretrained=true")
    assert err.startswith("error: teacher.vit: pretrained weights for 'vit_base_patch16_224' are not in the local")
    from downstream.kd.__main__ import main

    with pytest.raises(SystemExit) as exc:
        main(["train", "--recipe", "nanoray", "student.pretrained=true", "--show-config"])
    assert exc.value.code == 0 and "pretrained: true" in capsys.readouterr().out
