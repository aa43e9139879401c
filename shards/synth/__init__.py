"""Synthetic ultrasound data: realistic enough B-mode frames that the pipeline's behaviour on
them means something, in three on-disk layouts (``python -m shards.synth --help``).

- :func:`render` one frame in memory (a :class:`Frame`: image, lesion masks, scan area);
- :func:`write_corpus` an unlabeled multi-source corpus (``OUT/<source>/...``);
- :func:`write_busi` BUSI's layout (``benign/benign (1).png`` + ``_mask.png``);
- :func:`write_ddti` DDTI's layout (``image/<patient>_<k>.png`` + ``mask/...``).

Physics in :mod:`shards.synth.bmode`, scan geometry in :mod:`shards.synth.geometry`, anatomy
per preset in :mod:`shards.synth.anatomy`, lesions in :mod:`shards.synth.lesions`.
"""

from shards.synth.busi import write_busi
from shards.synth.corpus import write_corpus
from shards.synth.ddti import write_ddti
from shards.synth.presets import PRESETS, Preset
from shards.synth.render import Frame, render

__all__ = ["PRESETS", "Preset", "Frame", "render", "write_corpus", "write_busi", "write_ddti"]
