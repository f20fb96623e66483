"""Fine-tuning benchmarks: one module per family (reader, official metrics, submission writer), all behind the
:class:`~itnet_scale.tasks.benchmark.Benchmark` interface and the :data:`BENCHMARKS` registry; importing the
package registers every benchmark (``imagenet``, the GLUE tasks, ``modelnet40``, ``vqav2``, ``nlvr2``)."""

from itnet_scale.tasks import glue, imagenet, nlvr2, vqa  # register their benchmarks
from itnet_scale.tasks.benchmark import BENCHMARKS, Benchmark, Example, Split, get_benchmark, register_benchmark
from itnet_scale.tasks.modelnet40 import ModelNet40, ModelNet40Settings

__all__ = ["BENCHMARKS", "Benchmark", "Example", "ModelNet40", "ModelNet40Settings", "Split", "get_benchmark", "glue",
           "imagenet", "nlvr2", "register_benchmark", "vqa"]
