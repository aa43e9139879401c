"""The papers' reproductions of the KD recipes (``python -m downstream.kd train``): each runs its
recipe as the paper did and writes the paper's tables and figures (:mod:`downstream.kd.papers.base`)."""
