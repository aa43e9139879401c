"""What a sweep cell was computed from beyond its settings: stamps of its dataset, encoders and files.

A cell's key holds them, so a sweep run again after a dataset was edited (new masks, new pixels), an
encoder folder re-exported or a KD teacher checkpoint replaced runs the affected cells again instead
of keeping results of the old inputs. Stamps come from file names, sizes and modification times
(``os.stat``), not contents: a 160K-image dataset or a multi-GB DINOv3 folder is stamped in a
fraction of a second; `datasets` tables by their own fingerprint.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from downstream.config import RunConfig, read_task_data
from downstream.data.record import source_stamp
from sonodistill.config import to_dict


def encoder_folder(spec: str) -> Path | None:
    """The local folder an encoder spec loads its weights from (None: a name, or a random init)."""
    spec = spec.strip()
    for prefix in ("local-dir:", "dinov3:", "hf-hub:"):
        if spec.startswith(prefix):
            spec = spec[len(prefix) :]
            break
    else:
        if spec == "rand" or spec.startswith(("rand:", "timm:")):
            return None
    return Path(spec) if spec and Path(spec).is_dir() else None


def encoder_stamp(spec: str) -> str:
    """Every file of the encoder's folder (relative name, size, modification time); '' for names
    (timm, Hub ids: the name pins the weights) and random inits."""
    folder = encoder_folder(spec)
    if folder is None:
        return ""
    h = hashlib.sha1()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        st = f.stat()
        h.update(f"{f.relative_to(folder).as_posix()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:16]


class InputStamps:
    """Stamps of a sweep's inputs, each dataset and encoder folder read once."""

    def __init__(self) -> None:
        self._data: dict[str, str] = {}
        self._encoders: dict[str, str] = {}

    def data(self, rc: RunConfig) -> str:
        """The task's dataset fingerprint (:meth:`Catalog.fingerprint`: ids, labels, groups and the
        size and modification time of every image and mask file)."""
        key = json.dumps([rc.task, rc.data, to_dict(rc.reader)], sort_keys=True)
        if key not in self._data:
            # without opening every image (check=False): the cell's own read checks them
            self._data[key] = read_task_data(rc.task, rc.data, rc.reader, check=False).fingerprint()
        return self._data[key]

    def encoder(self, spec: str) -> str:
        if spec not in self._encoders:
            self._encoders[spec] = encoder_stamp(spec)
        return self._encoders[spec]

    def of(self, rc: RunConfig, encoders: list[str], files: list[str] = ()) -> dict[str, str]:
        """``{"data": ..., "encoder:SPEC": ..., "file:PATH": ...}`` for a cell of ``rc`` that loads
        ``encoders`` and ``files`` (a KD teacher's checkpoint)."""
        stamps = {"data": self.data(rc)}
        for spec in encoders:
            stamp = self.encoder(spec)
            if stamp:
                stamps[f"encoder:{spec}"] = stamp
        for path in files:
            stamps[f"file:{path}"] = source_stamp(path)
        return stamps
