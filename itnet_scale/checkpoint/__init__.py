"""Checkpoints: DeepSpeed's, the library format, and conversion, verification and inspection between them.

One job per module:

- :mod:`~itnet_scale.checkpoint.deepspeed_checkpoint`: the training side — atomic saves with ``latest``, resume,
  retention, weights-only loading of DeepSpeed's files, universal conversion (any world size).
- :mod:`~itnet_scale.checkpoint.library`: the library format — ``save_pretrained`` / ``from_pretrained``,
  ``config.yaml`` (:class:`~itnet_scale.checkpoint.library.LibraryConfig`), safetensors shards and their index,
  :class:`~itnet_scale.checkpoint.library.LibraryFolder`, loading into a model (``init_from``).
- :mod:`~itnet_scale.checkpoint.atomic_writes`: files and folders that appear whole, with the user's umask.
- :mod:`~itnet_scale.checkpoint.sources`: either kind of checkpoint opened as tensors to read one at a time.
- :mod:`~itnet_scale.checkpoint.conversion`: DeepSpeed checkpoint → library folder.
- :mod:`~itnet_scale.checkpoint.verification`: the converted model gives the source's outputs.
- :mod:`~itnet_scale.checkpoint.inspection`: what a checkpoint holds, from its metadata.

The command lines are ``tools/convert_checkpoint.py`` and ``tools/inspect_checkpoint.py`` (installed as
``itnet-convert-checkpoint`` and ``itnet-inspect-checkpoint``).

Layering — imports point one way, and the module graph is a DAG::

    ops ← nn ← models.config ← models.registry ← checkpoint.library ← models.itnet ← models
    checkpoint.atomic_writes ← checkpoint.library, checkpoint.deepspeed_checkpoint
    models, checkpoint.deepspeed_checkpoint ← checkpoint.sources ← checkpoint.verification ← checkpoint.conversion
                                              checkpoint.sources ← checkpoint.inspection
    all of the above ← train ← launch, tools

The library format is the one part of this package below the model classes: they inherit ``save_pretrained`` and
``from_pretrained`` from it, and it builds models through the registry, where the model classes register themselves
(the registry imports no model module). Everything else here builds or reads models and sits above them.

Python runs a package's ``__init__`` before any module in it, and importing ``itnet_scale.models.config`` first runs
``itnet_scale/models/__init__.py``, which loads the model classes and with them the library format. So that this
happens in the order above whichever module of this package a program imports first, this file imports
:mod:`itnet_scale.models` before anything else; it holds nothing else.
"""

import itnet_scale.models  # noqa: F401  (loads the models, and the library format below them, first: see above)
