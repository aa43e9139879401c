"""The torch Dataset over records: decode grayscale, resize, return uint8 tensors.

Workers only decode and resize (to a fixed square ``size``, so batches collate); augmentation
and normalisation run batched on the device (:mod:`downstream.data.transforms`), which keeps
host->device copies at 1 byte per pixel and the CPU free for decoding.
Items: ``image`` uint8 [1,S,S], ``mask`` uint8 [1,S,S] (0/1, union of the record's masks),
``label`` int64 (when labelled), ``index`` (position in ``records``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from downstream.data.pixels import load_gray, load_mask
from downstream.data.record import Record


class ImageSet(Dataset):
    def __init__(self, records: Sequence[Record], size: int, *, masks: bool = False, labels: bool = False):
        self.records = list(records)
        self.size = int(size)
        self.masks = masks
        self.labels = labels

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        r = self.records[i]
        gray = load_gray(r.image)
        s = (self.size, self.size)
        img = np.asarray(Image.fromarray(gray).resize(s, Image.BILINEAR))
        item = {"image": torch.from_numpy(img.copy())[None], "index": torch.tensor(i)}
        if self.masks:
            m = load_mask(r.masks, size=(gray.shape[1], gray.shape[0]))
            m = np.asarray(Image.fromarray(m.astype(np.uint8)).resize(s, Image.NEAREST))
            item["mask"] = torch.from_numpy(m.copy())[None]
        if self.labels:
            item["label"] = torch.tensor(int(r.label), dtype=torch.long)
        return item
