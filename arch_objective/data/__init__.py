"""Corpora and vocabularies: where documents come from and how they become token ids.

Among the submodules:

- `arch_objective.data.sources`: documents (plain strings) from local text and JSON
  Lines files and TFDS (`c4/en`), each host reading its own share, with the position a
  read restarts at.
- `arch_objective.data.task`: the `Task` contract every trainable task meets;
  `registry`: the corpus tasks (a corpus and an objective) by name.
- `arch_objective.data.world`: the seeded synthetic world (its corpus, facts and prompted
  tasks), the data of `gin/local.gin` and of the laptop-scale study.
- `arch_objective.data.vocabularies`: T5's SentencePiece vocabulary with 100 extra
  ids, without TensorFlow, and `train_sentencepiece` for a corpus of one's own.

Nothing is imported here, so that importing one submodule does not pull in the
dependencies of the others.
"""
