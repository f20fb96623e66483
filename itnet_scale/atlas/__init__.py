"""The kernel atlas: what each integral-transform head of a model learned — a convolution, an attention, a
recurrence — read from its kernel ``K_h(i,j)`` on a batch.

- :func:`atlas` (``atlas(model, batch) -> Atlas``): one forward, every layer call's kernel captured and scored;
- :func:`capture_kernels`: the capture alone (a context manager), also for layers built per call;
- :mod:`~itnet_scale.atlas.scores`: locality, reach, translation, content dependence, causality, and the nearest
  special case (conv-like, recurrence-like, attention-like, mixed/global);
- :mod:`~itnet_scale.atlas.figures`: heatmaps of ``K(i,·)`` and the per-model summary (matplotlib, optional).
"""

from itnet_scale.atlas.capture import LayerKernel, capture_kernels
from itnet_scale.atlas.figures import require_matplotlib
from itnet_scale.atlas.kernel_atlas import Atlas, LayerAtlas, atlas, default_queries, inspection_batch, run_model
from itnet_scale.atlas.scores import CLASSES, SCORES, AtlasSettings, HeadScores, head_scores, nearest_special_case

__all__ = ["CLASSES", "SCORES", "Atlas", "AtlasSettings", "HeadScores", "LayerAtlas", "LayerKernel", "atlas",
           "capture_kernels", "default_queries", "head_scores", "inspection_batch", "nearest_special_case",
           "require_matplotlib", "run_model"]
