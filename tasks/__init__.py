"""Task registrations: the paper's C4 tasks and any local corpus, in our registry and seqio's.

Importing this package registers the C4 tasks (idempotent). Local corpora:

    import tasks
    tasks.register_local_corpus("mycorpus", "data/*.jsonl", vocabulary="spm.model")

registers `mycorpus_full_lm`, `mycorpus_prefix_lm_decoder`,
`mycorpus_prefix_lm_encoder_decoder` and `mycorpus_span_corruption`. See
`arch_objective.data.registry` for what each yields. A run's data goes through
`resolve(task, source=...)`, which registers what the source describes
(`arch_objective.training.sources`: C4, a LocalCorpus as `local_<kind>`, PromptedDatasets)
and returns the task's spec.

`import tasks.seqio_tasks` registers every task with seqio too (it imports TensorFlow), in
t5x's contract: examples made at the TASK_FEATURE_LENGTHS asked for, model features from
seqio's converters (`tasks.seqio_bridge`). `resolve` also returns any task or mixture
registered with seqio alone, read through `seqio.get_dataset` (`tasks.seqio_source.SeqioTask`).
"""
from tasks.corpora import (C4_TASKS, configure_c4, register_corpus, register_local_corpus,
                           resolve)

__all__ = ["C4_TASKS", "configure_c4", "register_corpus", "register_local_corpus", "resolve"]
