"""Importing this module registers every task with seqio as well (t5x's
MIXTURE_OR_TASK_MODULE): `seqio.get_mixture_or_task("c4_span_corruption")` then serves
the same examples as `arch_objective.data.registry.get(...)`. Needs TensorFlow."""
from tasks import seqio_bridge

seqio_bridge.enable()
