"""Session-wide fixtures shared by every stage's tests: synthetic data and tiny models.

Everything here is generated locally (no network): the project's synthetic ultrasound
generator and tiny random-initialised configs of the real architectures.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# Tests must never reach the network (no weights or datasets can be downloaded here or in CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `make test` runs two workers on two cores: one thread each
    os.environ.setdefault("OMP_NUM_THREADS", "1")

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def repo_root() -> Path:
    return REPO


@pytest.fixture(scope="session")
def corpus_dir(tmp_path_factory) -> Path:
    """A small synthetic corpus: one folder per source dataset (``--layout corpus``)."""
    from shards.synth import write_corpus

    out = tmp_path_factory.mktemp("corpus")
    write_corpus(out, n=120, seed=0, truth=out.parent / (out.name + "_truth.jsonl"))
    return out


@pytest.fixture(scope="session")
def corpus_truth(corpus_dir) -> list[dict]:
    """The generator's ground truth for ``corpus_dir`` (kind, duplicate_of, scan-area bbox...)."""
    import json

    path = corpus_dir.parent / (corpus_dir.name + "_truth.jsonl")
    return [json.loads(line) for line in path.read_text().splitlines()]


@pytest.fixture(scope="session")
def shard_dir(corpus_dir, tmp_path_factory) -> Path:
    """WebDataset shards (64 px, 16 samples per shard) built from ``corpus_dir``."""
    from shards.build import BuildSettings, build_shards

    out = tmp_path_factory.mktemp("shards")
    sources = {p.name: str(p) for p in sorted(corpus_dir.iterdir()) if p.is_dir()}
    build_shards(sources, out, BuildSettings(size=64, samples_per_shard=16, workers=1))
    return out


@pytest.fixture(scope="session")
def busi_dir(tmp_path_factory) -> Path:
    """Synthetic BUSI in its real layout (benign/ malignant/ normal/ with _mask files)."""
    from shards.synth import write_busi

    out = tmp_path_factory.mktemp("busi")
    write_busi(out, n=60, seed=0)
    return out


@pytest.fixture(scope="session")
def ddti_dir(tmp_path_factory) -> Path:
    """Synthetic DDTI-style thyroid segmentation data with patient ids in file names."""
    from shards.synth import write_ddti

    out = tmp_path_factory.mktemp("ddti")
    write_ddti(out, n=48, seed=0)
    return out


@pytest.fixture(scope="session")
def tiny_teacher_dir(tmp_path_factory) -> Path:
    """A tiny random-initialised DINOv3 ViT saved with ``save_pretrained`` (loaded via from_pretrained)."""
    from sonodistill.dinov3 import init_tiny

    out = tmp_path_factory.mktemp("tiny_teacher")
    init_tiny(out, seed=0)
    return out


CACHE = REPO / ".cache"
POCUS_DATA = CACHE / "itk-pocus" / "itk-pocus-0.3.2" / "tests" / "data"
DEID_DATA = CACHE / "deid-data" / "deid-data-0.0.20" / "deid_data" / "data" / "ultrasounds"
PYDICOM_DATA = CACHE / "pydicom-data" / "pydicom-data-1.0.0" / "data_store" / "data"


def _cached(env: str, default: Path, probe: str, what: str) -> Path:
    """A folder of real recordings fetched by `make testdata` (``env`` may point elsewhere)."""
    path = Path(os.environ.get(env, default))
    if not (path / probe).is_file():
        pytest.fail(f"{what} missing at {path}: run `make testdata` (or `make test`) once", pytrace=False)
    return path


@pytest.fixture(scope="session")
def pocus_dir() -> Path:
    """Real device recordings from the itk-pocus 0.3.2 sdist (Apache-2.0), fetched once by `make`."""
    return _cached("SONODISTILL_POCUS_DATA", POCUS_DATA, "butterfly-vsync.mp4", "real test recordings")


@pytest.fixture(scope="session")
def deid_dir() -> Path:
    """Real ultrasound DICOMs from the deid-data 0.0.20 sdist (MIT): probes in air, an echo colour cine."""
    return _cached("SONODISTILL_DEID_DATA", DEID_DATA, "GREYSCALE_IMAGE.dcm", "deid-data recordings")


@pytest.fixture(scope="session")
def pydicom_data_dir() -> Path:
    """Real ultrasound DICOMs from the pydicom-data 1.0.0 sdist (MIT): power Doppler, marks in the scan."""
    return _cached("SONODISTILL_PYDICOM_DATA", PYDICOM_DATA, "OBXXXX1A.dcm", "pydicom-data recordings")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Under pytest-xdist (``--dist loadgroup``) the SLURM tests share one worker, so one cluster serves them."""
    for item in items:
        if "slurm_cluster" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("slurm"))


@pytest.fixture(scope="session")
def slurm_cluster():
    """A throw-away single-node SLURM (``tests/slurm/cluster.py``) with ``SLURM_CONF`` exported; skips
    where it cannot run (not root, binaries missing), fails with the daemons' logs where it should."""
    from slurm.cluster import ClusterError, Unavailable, start

    try:
        cluster = start()
    except Unavailable as exc:
        pytest.skip(f"no throw-away SLURM here: {exc}")
    except ClusterError as exc:
        pytest.fail(f"the throw-away SLURM did not start: {exc}", pytrace=False)
    with cluster, pytest.MonkeyPatch.context() as mp:
        mp.setenv("SLURM_CONF", str(cluster.conf))
        yield cluster
