"""Labelled downstream data: readers -> :class:`Catalog` of :class:`Record`, the torch Dataset,
and the batched on-device transforms. Splits and label fractions live in :mod:`downstream.splits`.

Readers: :func:`read_busi` (BUSI real layout), :func:`read_paired` (DDTI-style image/mask folders
with patient ids, and generic ones), :func:`read_class_folders`, :func:`read_hub` (`datasets`:
``hf:ID``, ``save_to_disk`` folder, imagefolder), UltraBench (``ub:DIR``); :func:`read_catalog`
picks one for a task through the layout table of :mod:`downstream.data.read`.
"""

from downstream.data.busi import BUSI_CLASSES, read_busi
from downstream.data.classes import read_class_folders
from downstream.data.hub import HubImage, read_hub
from downstream.data.paired import read_paired
from downstream.data.pixels import binarize, check_records, load_gray, load_mask
from downstream.data.read import ReaderConfig, detect_layout, read_catalog
from downstream.data.record import Catalog, ImageSource, Record
from downstream.data.torchset import ImageSet
from downstream.data.transforms import GeometricAugment, GeometricAugmentConfig, to_input

__all__ = [
    "BUSI_CLASSES",
    "GeometricAugmentConfig",
    "Catalog",
    "GeometricAugment",
    "HubImage",
    "ImageSet",
    "ImageSource",
    "ReaderConfig",
    "Record",
    "binarize",
    "check_records",
    "detect_layout",
    "load_gray",
    "load_mask",
    "read_busi",
    "read_catalog",
    "read_class_folders",
    "read_hub",
    "read_paired",
    "to_input",
]
