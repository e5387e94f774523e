"""Corpora and vocabularies: where documents come from and how they become token ids.

Among the submodules:

- `arch_objective.data.sources`: documents (plain strings) from local text and JSON
  Lines files, TFDS (`c4/en`) and Hugging Face datasets; `shard` for multi-host reading.
- `arch_objective.data.vocabularies`: T5's SentencePiece vocabulary with 100 extra
  ids, without TensorFlow, and `train_sentencepiece` for a corpus of one's own.

Nothing is imported here, so that importing one submodule does not pull in the
dependencies of the others.
"""
