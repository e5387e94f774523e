"""SentencePiece vocabularies with T5's extra ids (sentinels), without TensorFlow.

The paper's vocabulary is T5's `cc_all.32000` SentencePiece model plus 100 extra ids:
32000 pieces (PAD 0, EOS 1, UNK 2, ...) followed by 100 sentinels numbered from the end,
`<extra_id_0>` = 32099 down to `<extra_id_99>` = 32000, so `vocab_size` is 32100 (the
embedding is padded to `padded_vocab_size(32100) == 32128`).

  >>> vocab = SentencePieceVocabulary("t5_spiece.model")
  >>> vocab.encode("Hello world")
  [8774, 296]
  >>> vocab.decode([8774, 32099, 296, 1, 55, 0])   # stops at EOS (1)
  'Hello <extra_id_0> world'

Tokenisation matches `seqio.SentencePieceVocabulary(path, extra_ids)` exactly: the
sentinels are added to the model as user-defined pieces `▁<extra_id_k>`, so the text
`"a <extra_id_0> b"` encodes to `[3, 9, 32099, 3, 115]` as in seqio. Only this class's
loading needs TensorFlow, and only for non-local paths (`gs://...`), read through
`tensorflow.io.gfile`. `to_seqio` gives the seqio twin for seqio tasks.
"""
from __future__ import annotations

import io
import os
import re
from typing import Iterable, Iterator, Optional, Sequence

import sentencepiece as spm

from arch_objective.errors import (MissingDependency, MissingFile, UserError,
                                   integer_at_least)

DEFAULT_VOCABULARY_PATH = "gs://t5-data/vocabs/cc_all.32000.100extra/sentencepiece.model"
DEFAULT_EXTRA_IDS = 100
PAD_ID = 0
EOS_ID = 1
UNK_ID = 2

MODEL_TYPES = ("unigram", "bpe", "char", "word")


def _is_remote(path: str) -> bool:
  return "://" in path


def _read_model_bytes(path: str) -> bytes:
  """The bytes of a SentencePiece model file, local or behind `tensorflow.io.gfile`."""
  if not _is_remote(path):
    if not os.path.isfile(path):
      raise MissingFile(
          f"SentencePiece vocabulary {path!r} not found. Pass an existing .model "
          f"file with --vocabulary (the T5 one is {DEFAULT_VOCABULARY_PATH}), or "
          f"train one on your corpus with "
          f"arch_objective.data.vocabularies.train_sentencepiece.")
    with open(path, "rb") as f:
      return f.read()
  try:
    import tensorflow as tf
  except ImportError as e:
    raise MissingDependency(
        f"Reading the vocabulary {path} needs tensorflow.io.gfile, and TensorFlow "
        f"is not installed. Install tensorflow-cpu, or copy the file to local disk "
        f"(e.g. `gsutil cp {path} .`) and pass the local path (--vocabulary, or the VOCABULARY gin macro)."
    ) from e
  try:
    with tf.io.gfile.GFile(path, "rb") as f:
      return f.read()
  except tf.errors.NotFoundError:
    raise MissingFile(
        f"SentencePiece vocabulary {path!r} not found. Pass an existing .model "
        f"file with --vocabulary.") from None
  except tf.errors.OpError as e:
    raise OSError(
        f"Cannot read the SentencePiece vocabulary {path!r}: {e.message}. Check the "
        f"path and your credentials, or copy the file to local disk and pass the "
        f"local path with --vocabulary.") from None


def _with_sentinels(model: bytes, extra_ids: int) -> bytes:
  """`model` with `▁<extra_id_{extra_ids-1}>` ... `▁<extra_id_0>` appended, as seqio."""
  from sentencepiece import sentencepiece_model_pb2

  proto = sentencepiece_model_pb2.ModelProto.FromString(model)
  for k in reversed(range(extra_ids)):
    proto.pieces.add(
        piece=f"▁<extra_id_{k}>", score=0.0,
        type=sentencepiece_model_pb2.ModelProto.SentencePiece.USER_DEFINED)
  return proto.SerializeToString()


class SentencePieceVocabulary:
  """A SentencePiece model plus `extra_ids` sentinels at the top of the id range.

  Ids `[0, base_vocab_size)` are the model's pieces; `[base_vocab_size, vocab_size)`
  are sentinels, `sentinel_id(k) == vocab_size - 1 - k`. Equal (and hashed) by
  `(path, extra_ids)`; picklable (the model travels with the pickle).

  Raises (at construction):
    FileNotFoundError: the model file does not exist.
    ValueError: the file is not a SentencePiece model, or its PAD/EOS/UNK ids are not
      T5's 0/1/2.
  """

  def __init__(self, path: str, extra_ids: int = DEFAULT_EXTRA_IDS):
    path = os.fspath(path)
    if not _is_remote(path):
      path = os.path.expanduser(path)
    if not integer_at_least(extra_ids, 0):
      raise UserError(f"extra_ids must be an integer >= 0, found {extra_ids!r} "
                      f"(T5 uses {DEFAULT_EXTRA_IDS}).")
    self._path = path
    self._extra_ids = extra_ids
    self._load(_read_model_bytes(path))

  def _load(self, model: bytes) -> None:
    try:
      base = spm.SentencePieceProcessor(model_proto=model)
    except (RuntimeError, OSError) as e:
      raise UserError(f"{self._path} is not a SentencePiece model ({e}). Pass a "
                      f".model file written by SentencePiece.") from None
    found = (base.pad_id(), base.eos_id(), base.unk_id())
    if found != (PAD_ID, EOS_ID, UNK_ID):
      raise UserError(
          f"{self._path}: expected T5's special ids pad=0, eos=1, unk=2, found "
          f"pad={found[0]}, eos={found[1]}, unk={found[2]}. Train the model with "
          f"pad_id=0 eos_id=1 unk_id=2 bos_id=-1 (train_sentencepiece does).")
    self._model = model
    self._base_vocab_size = base.get_piece_size()
    self._sp = (spm.SentencePieceProcessor(
        model_proto=_with_sentinels(model, self._extra_ids))
                if self._extra_ids else base)

  def __getstate__(self) -> dict:
    return {"path": self._path, "extra_ids": self._extra_ids, "model": self._model}

  def __setstate__(self, state: dict) -> None:
    self._path = state["path"]
    self._extra_ids = state["extra_ids"]
    self._load(state["model"])

  @property
  def path(self) -> str:
    return self._path

  @property
  def extra_ids(self) -> int:
    return self._extra_ids

  @property
  def model_bytes(self) -> bytes:
    """The SentencePiece model file's bytes (without the sentinels)."""
    return self._model

  @property
  def base_vocab_size(self) -> int:
    """Pieces in the SentencePiece model, PAD/EOS/UNK included (T5: 32000)."""
    return self._base_vocab_size

  @property
  def vocab_size(self) -> int:
    """`base_vocab_size + extra_ids` (T5: 32100); the embedding may be padded."""
    return self._base_vocab_size + self._extra_ids

  @property
  def pad_id(self) -> int:
    return PAD_ID

  @property
  def eos_id(self) -> int:
    return EOS_ID

  @property
  def unk_id(self) -> int:
    return UNK_ID

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without EOS: `"Hello world"` -> `[8774, 296]` (T5)."""
    if not isinstance(text, str):
      raise TypeError(f"encode takes a str, found {type(text).__name__}; use "
                      f"encode_batch for several texts.")
    return self._sp.encode(text)

  def encode_batch(self, texts: Iterable[str]) -> list[list[int]]:
    """`[encode(t) for t in texts]`, in one SentencePiece call."""
    texts = list(texts)
    for i, text in enumerate(texts):
      if not isinstance(text, str):
        raise TypeError(f"encode_batch takes strings; item {i} is a "
                        f"{type(text).__name__}.")
    return self._sp.encode(texts) if texts else []

  def decode(self, ids: Iterable[int]) -> str:
    """The text of `ids` up to the first EOS, without PAD, sentinels as `<extra_id_k>`.

    Ids outside `[0, vocab_size)` (e.g. the padding rows of a padded embedding)
    decode as UNK (` ⁇ `), as in seqio. With T5's vocabulary:
    `decode([8774, 32099, 296, 1, 55])` -> `'Hello <extra_id_0> world'`.
    """
    clean: list[int] = []
    for i in ids:
      i = int(i)
      if i == EOS_ID:
        break
      if i == PAD_ID:
        continue
      clean.append(i if 0 <= i < self.vocab_size else UNK_ID)
    return self._sp.decode(clean)

  def sentinel_id(self, k: int) -> int:
    """The id of `<extra_id_k>`: `vocab_size - 1 - k` (T5: 0 -> 32099, 99 -> 32000)."""
    if not 0 <= k < self._extra_ids:
      raise UserError(f"Sentinel <extra_id_{k}> does not exist: this vocabulary has "
                      f"extra_ids={self._extra_ids}, so k must be in "
                      f"[0, {self._extra_ids}).")
    return self.vocab_size - 1 - k

  def is_sentinel(self, token_id: int) -> bool:
    """Whether `token_id` is one of the extra ids `[base_vocab_size, vocab_size)`."""
    return self._base_vocab_size <= int(token_id) < self.vocab_size

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, SentencePieceVocabulary):
      return NotImplemented
    return (self._path, self._extra_ids) == (other._path, other._extra_ids)

  def __hash__(self) -> int:
    return hash((SentencePieceVocabulary, self._path, self._extra_ids))

  def __repr__(self) -> str:
    return (f"SentencePieceVocabulary(path={self._path!r}, "
            f"extra_ids={self._extra_ids})")


def padded_vocab_size(n: int, multiple: int = 128) -> int:
  """`n` rounded up to a multiple of `multiple`: 32100 -> 32128, 32128 -> 32128."""
  if n < 1 or multiple < 1:
    raise UserError(f"padded_vocab_size needs n >= 1 and multiple >= 1; found "
                    f"n={n}, multiple={multiple}.")
  return -(-n // multiple) * multiple


class _Sentences:
  """The non-blank lines of documents, counted; keeps any error the source raises.

  SentencePiece turns an exception raised inside its `sentence_iterator` into a
  RuntimeError; `error` keeps the original so that it can be raised as is.
  """

  def __init__(self, documents: Iterable[str]):
    self._documents = documents
    self.count = 0
    self.error: Optional[BaseException] = None

  def __iter__(self) -> Iterator[str]:
    try:
      for document in self._documents:
        for line in document.split("\n"):
          if line.strip():
            self.count += 1
            yield line
    except Exception as e:
      self.error = e
      raise


def train_sentencepiece(documents: Iterable[str], model_prefix: str, vocab_size: int,
                        *, model_type: str = "unigram", character_coverage: float = 1.0,
                        seed: int = 0, max_sentence_length: int = 4192) -> str:
  """Trains a SentencePiece model with T5's conventions; returns `<model_prefix>.model`.

  PAD=0, EOS=1, UNK=2, no BOS, as `SentencePieceVocabulary` requires. Each non-blank
  line of each document is one training sentence (C4 documents are paragraphs joined
  by "\\n", and SentencePiece skips sentences longer than `max_sentence_length`
  bytes). Training is deterministic: one thread, input kept in order, SentencePiece's
  random generator seeded with `seed` (a process-wide setting), and the written model
  does not record where it was written, so the same documents and options give
  byte-identical `.model` files. Also writes `<model_prefix>.vocab` (piece and score,
  tab-separated, one per line). All sentences are held in memory: pass a sample
  (e.g. `itertools.islice(documents, 100_000)`) of a large corpus.

  Raises:
    ValueError: no non-blank text, an unknown `model_type`, or a `vocab_size` the
      corpus cannot fill (the message gives the largest size it can).
  """
  if model_type not in MODEL_TYPES:
    raise UserError(f"Unknown SentencePiece model_type {model_type!r}; valid types: "
                    f"{', '.join(MODEL_TYPES)}.")
  if not integer_at_least(vocab_size, 4):
    raise UserError(f"vocab_size must be an integer >= 4 (PAD, EOS, UNK and at least "
                    f"one piece); found {vocab_size!r}.")
  sentences = _Sentences(documents)
  stream = iter(sentences)
  first = next(stream, None)
  if first is None:
    raise UserError(f"Cannot train a SentencePiece model for {model_prefix}: the "
                    f"corpus holds no non-blank text. Check the corpus patterns and "
                    f"the text field.")

  def all_sentences() -> Iterator[str]:
    yield first
    yield from stream

  spm.set_random_generator_seed(seed)
  writer = io.BytesIO()
  try:
    spm.SentencePieceTrainer.train(
        sentence_iterator=all_sentences(), model_writer=writer,
        vocab_size=vocab_size, model_type=model_type,
        character_coverage=character_coverage,
        max_sentence_length=max_sentence_length,
        pad_id=PAD_ID, eos_id=EOS_ID, unk_id=UNK_ID, bos_id=-1,
        num_threads=1, shuffle_input_sentence=False, input_sentence_size=0,
        minloglevel=2)
  except (RuntimeError, ValueError) as e:
    if sentences.error is not None:
      raise sentences.error from None
    message = str(e)
    largest = re.search(r"<=\s*(\d+)", message)
    if "too high" in message and largest:
      raise UserError(
          f"vocab_size={vocab_size} is too large for this corpus "
          f"({sentences.count} sentences): SentencePiece can make at most "
          f"{largest.group(1)} pieces from it. Use vocab_size <= "
          f"{largest.group(1)}, or train on more text.") from None
    raise UserError(f"SentencePiece training for {model_prefix} failed: "
                    f"{message.strip()}") from None
  model = writer.getvalue()
  parent = os.path.dirname(os.path.abspath(model_prefix))
  os.makedirs(parent, exist_ok=True)
  model_path = f"{model_prefix}.model"
  with open(model_path, "wb") as f:
    f.write(model)
  with open(f"{model_prefix}.vocab", "w", encoding="utf-8") as f:
    f.writelines(f"{piece}\t{score:g}\n" for piece, score in _pieces(model))
  return model_path


def _pieces(model: bytes) -> Sequence[tuple[str, float]]:
  sp = spm.SentencePieceProcessor(model_proto=model)
  return [(sp.id_to_piece(i), sp.get_score(i)) for i in range(sp.get_piece_size())]


def to_seqio(vocab: SentencePieceVocabulary):
  """The `seqio.SentencePieceVocabulary` twin of `vocab` (imports seqio, TensorFlow)."""
  import seqio

  return seqio.SentencePieceVocabulary(vocab.path, extra_ids=vocab.extra_ids)
