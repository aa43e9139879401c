"""The supervised KD recipes, one module each: config, models, losses and ``run`` (the
:class:`~downstream.kd.recipes.base.Recipe` protocol). Four classification recipes (papers 000,
003, 001, 004) and one segmentation recipe (``seg_unet``, after Liu et al., CVPR 2019); listed by
name in :mod:`downstream.kd.registry`."""
