"""Tasks for the one training loop (:func:`downstream.fit.fit`): a model plus how a batch becomes its
loss and a split its metrics. Segmentation and classification live here; each KD recipe's task
(logit KD, HDKD's two heads and feature loss, CSA-MoE's views and gates) builds on
:class:`Classification` in :mod:`downstream.kd`."""

from downstream.tasks.base import Task, to_device
from downstream.tasks.classification import Classification
from downstream.tasks.segmentation import Segmentation

VAL_NAMES = {"cls": Classification.val_names, "seg": Segmentation.val_names}  # by task kind

__all__ = ["VAL_NAMES", "Classification", "Segmentation", "Task", "to_device"]
