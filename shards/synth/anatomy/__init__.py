"""Anatomy of each preset as a :class:`~shards.synth.scene.Scene` in physical coordinates (mm).

Each module builds one view with its characteristic structures; all take the same arguments
``(rng, extent, atten_db_cm)`` and return a Scene whose ``lesion_zone``/``host_db`` say where a
focal lesion may sit.
"""

from shards.synth.anatomy.breast import breast
from shards.synth.anatomy.cardiac import cardiac
from shards.synth.anatomy.extent import Extent
from shards.synth.anatomy.fetal import fetal
from shards.synth.anatomy.liver import liver
from shards.synth.anatomy.msk import musculoskeletal
from shards.synth.anatomy.thyroid import thyroid

BUILDERS = {
    "breast": breast,
    "thyroid": thyroid,
    "cardiac": cardiac,
    "fetal": fetal,
    "musculoskeletal": musculoskeletal,
    "liver": liver,
}

__all__ = ["BUILDERS", "Extent"]
