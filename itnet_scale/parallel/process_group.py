"""Starting the process group: ``init_distributed`` — ``deepspeed.init_distributed`` without DeepSpeed's
shared-memory all-reduce op.

On the CPU accelerator DeepSpeed JIT-compiles a shared-memory comm op when the process group starts (about two
minutes on a fresh machine) and maps a 64 MiB ``/dev/shm/deepspeed_allreduce_buffer_*`` segment per rank that
it never unlinks, so every run — and every run killed — leaves that much RAM behind in ``/dev/shm``. The op
serves only ``inference_all_reduce`` (tensor-parallel inference), which training never calls; DeepSpeed keeps
its op-compatibility table in one module-level dict for this kind of override, and marking the op
incompatible there makes the backend fall back to the process group's own collectives.
"""

from __future__ import annotations


def init_distributed(backend: str | None = None) -> None:
    """``deepspeed.init_distributed(dist_backend=backend)`` (the accelerator's default backend when None), with
    the shared-memory inference all-reduce op switched off (see the module doc). A no-op when the default
    process group exists already."""
    import deepspeed
    import deepspeed.ops
    from deepspeed.ops.op_builder.cpu import ShareMemCommBuilder

    deepspeed.ops.__compatible_ops__[ShareMemCommBuilder.NAME] = False
    deepspeed.init_distributed(dist_backend=backend)
