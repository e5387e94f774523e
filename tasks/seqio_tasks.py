"""Importing this module registers every task with seqio as well (t5x's
MIXTURE_OR_TASK_MODULE): `seqio.get_dataset("c4_span_corruption", {"inputs": 512,
"targets": 114}, seqio.EncDecFeatureConverter())` then serves the rows of our pipeline
(see `tasks.seqio_bridge`). With promptsource installed it registers the T0 training
mixture `t0_train` too (its seqio tasks and mixture), reading the datasets, when first
read, from the data directory in $ARCH_OBJECTIVE_T0_DATA_DIR or the mapping file in
$ARCH_OBJECTIVE_T0_MAPPING (`prompts.datasets`), else from Hugging Face `datasets`; a
`t0_train` registered before keeps its options. Needs TensorFlow."""
import importlib.util
import os

from arch_objective.data import registry
from tasks import seqio_bridge, t0

T0_DATA_DIR_ENV = "ARCH_OBJECTIVE_T0_DATA_DIR"
T0_MAPPING_ENV = "ARCH_OBJECTIVE_T0_MAPPING"

if importlib.util.find_spec("promptsource") is not None and t0.T0_TRAIN not in registry.names():
  t0.register_prompted_mixture(t0.T0_TRAIN, data_dir=os.environ.get(T0_DATA_DIR_ENV) or None,
                               mapping=os.environ.get(T0_MAPPING_ENV) or None,
                               with_seqio=False)
seqio_bridge.enable()
