"""Tests of `arch_objective.data.vocabularies` with the real T5 vocabulary, cross-checked
against seqio's implementation, and with small vocabularies trained on the C4 sample."""
import itertools
import json
import pathlib
import pickle
import sys

import pytest
import sentencepiece as spm

from arch_objective.data import sources
from arch_objective.data import vocabularies
from arch_objective.data.vocabularies import SentencePieceVocabulary

from helpers import CORPUS as C4_SAMPLE, VOCAB as T5_MODEL

SENTENCE = "The quick brown fox jumps over the lazy dog, twice."


def _require(path: pathlib.Path) -> pathlib.Path:
  if not path.is_file():
    pytest.skip(f"{path} is absent: the shared test data lives beside the repository, "
                f"in ../shared/data.")
  return path


@pytest.fixture(scope="module")
def t5() -> SentencePieceVocabulary:
  return SentencePieceVocabulary(str(_require(T5_MODEL)), extra_ids=100)


@pytest.fixture(scope="module")
def c4_texts() -> list[str]:
  with open(_require(C4_SAMPLE), encoding="utf-8") as f:
    return [json.loads(line)["text"] for line in f]


# ---------------------------------------------------------------------------
# The T5 vocabulary.
# ---------------------------------------------------------------------------


def test_t5_sizes_and_special_ids(t5):
  assert t5.base_vocab_size == 32000
  assert t5.vocab_size == 32100
  assert (t5.pad_id, t5.eos_id, t5.unk_id) == (0, 1, 2)
  assert t5.extra_ids == 100
  assert t5.path == str(T5_MODEL)


def test_t5_sentinels_count_down_from_the_top(t5):
  assert t5.sentinel_id(0) == 32099
  assert t5.sentinel_id(1) == 32098
  assert t5.sentinel_id(99) == 32000
  assert not t5.is_sentinel(31999)
  assert t5.is_sentinel(32000) and t5.is_sentinel(32099)
  assert not t5.is_sentinel(32100)
  with pytest.raises(ValueError, match="extra_ids=100"):
    t5.sentinel_id(100)


def test_t5_encode_decode_round_trip(t5):
  ids = t5.encode(SENTENCE)
  assert ids and all(isinstance(i, int) and 2 < i < 32000 for i in ids)
  assert ids[-1] != t5.eos_id
  assert t5.decode(ids) == SENTENCE
  # The pieces the ids name spell the sentence (SentencePiece's "▁" is a space).
  pieces = spm.SentencePieceProcessor(model_file=str(T5_MODEL)).id_to_piece(ids)
  assert "".join(pieces).replace("▁", " ").strip() == SENTENCE


def test_t5_decode_renders_sentinels_stops_at_eos_and_drops_pad(t5):
  hello, world = t5.encode("Hello"), t5.encode("world")
  ids = ([0] + hello + [32099] + world + [0, 32000] + t5.encode("again")
         + [1] + t5.encode("never shown") + [0, 0])
  assert t5.decode(ids) == "Hello <extra_id_0> world <extra_id_99> again"
  assert t5.decode([32098]) == "<extra_id_1>"
  assert t5.decode([1] + hello) == ""
  assert t5.decode([]) == ""


def test_t5_sentinel_text_encodes_to_sentinel_ids(t5):
  ids = t5.encode("Thank you <extra_id_0> me to your party <extra_id_1> week.")
  assert [i for i in ids if t5.is_sentinel(i)] == [32099, 32098]


def test_encode_batch_equals_encode_one_by_one(t5):
  texts = [SENTENCE, "Hello world", "", "<extra_id_5> end"]
  assert t5.encode_batch(texts) == [t5.encode(t) for t in texts]
  assert t5.encode_batch([]) == []
  with pytest.raises(TypeError, match="str"):
    t5.encode(["not", "a", "string"])


def test_padded_vocab_size():
  assert vocabularies.padded_vocab_size(32100) == 32128
  assert vocabularies.padded_vocab_size(32128) == 32128
  assert vocabularies.padded_vocab_size(32129) == 32256
  assert vocabularies.padded_vocab_size(300, multiple=64) == 320
  assert vocabularies.padded_vocab_size(1) == 128


def test_t5_matches_seqio_on_real_c4_documents(t5, c4_texts):
  seqio_vocab = vocabularies.to_seqio(t5)
  assert seqio_vocab.vocab_size == t5.vocab_size
  texts = c4_texts[:5] + ["Fill <extra_id_0> blanks <extra_id_7> here."]
  for text in texts:
    ids = t5.encode(text)
    assert ids == list(seqio_vocab.encode(text))
    assert t5.decode(ids) == seqio_vocab.decode(ids)
  with_eos = t5.encode(texts[0]) + [1] + t5.encode(texts[1])
  assert t5.decode(with_eos) == seqio_vocab.decode(with_eos)


def test_equality_hash_repr_and_pickle(t5):
  same = SentencePieceVocabulary(str(T5_MODEL))
  fewer = SentencePieceVocabulary(str(T5_MODEL), extra_ids=10)
  assert same == t5 and hash(same) == hash(t5)
  assert fewer != t5
  assert fewer.vocab_size == 32010 and fewer.sentinel_id(0) == 32009
  assert repr(t5) == f"SentencePieceVocabulary(path={str(T5_MODEL)!r}, extra_ids=100)"
  restored = pickle.loads(pickle.dumps(t5))
  assert restored == t5
  assert restored.encode(SENTENCE) == t5.encode(SENTENCE)
  assert restored.decode([32099]) == "<extra_id_0>"


def test_missing_vocabulary_names_path_and_option(tmp_path):
  missing = str(tmp_path / "nowhere.model")
  with pytest.raises(FileNotFoundError) as error:
    SentencePieceVocabulary(missing)
  assert missing in str(error.value)
  assert "--vocabulary" in str(error.value)
  assert "train_sentencepiece" in str(error.value)


def test_non_local_paths_are_read_through_gfile(t5, tmp_path, monkeypatch):
  remote = SentencePieceVocabulary(T5_MODEL.as_uri())
  assert remote.path == T5_MODEL.as_uri()
  assert remote.encode(SENTENCE) == t5.encode(SENTENCE)
  with pytest.raises(FileNotFoundError, match="nowhere.model"):
    SentencePieceVocabulary((tmp_path / "nowhere.model").as_uri())
  monkeypatch.setitem(sys.modules, "tensorflow", None)
  with pytest.raises(ImportError, match="tensorflow-cpu"):
    SentencePieceVocabulary("gs://bucket/vocab.model")


def test_not_a_model_and_non_t5_special_ids_are_rejected(tmp_path):
  garbage = tmp_path / "garbage.model"
  garbage.write_bytes(b"not a sentencepiece model")
  with pytest.raises(ValueError, match="garbage.model is not a SentencePiece model"):
    SentencePieceVocabulary(str(garbage))
  # SentencePiece's own defaults: unk=0, bos=1, eos=2, no pad.
  prefix = str(tmp_path / "defaults")
  spm.SentencePieceTrainer.train(
      sentence_iterator=iter(["ab ba abc cab bca"] * 20), model_prefix=prefix,
      vocab_size=10, minloglevel=2, num_threads=1)
  with pytest.raises(ValueError, match=r"defaults\.model.*found pad=-1, eos=2, unk=0"):
    SentencePieceVocabulary(prefix + ".model")


# ---------------------------------------------------------------------------
# Training a vocabulary.
# ---------------------------------------------------------------------------


def test_train_small_vocabulary_on_c4_is_deterministic(tmp_path, c4_texts):
  docs = c4_texts[:100]
  first = vocabularies.train_sentencepiece(docs, str(tmp_path / "a" / "spm"), 300)
  second = vocabularies.train_sentencepiece(iter(docs), str(tmp_path / "b" / "spm"),
                                            300)
  assert first == str(tmp_path / "a" / "spm.model")
  assert pathlib.Path(first).read_bytes() == pathlib.Path(second).read_bytes()

  vocab = SentencePieceVocabulary(first, extra_ids=100)
  assert vocab.base_vocab_size == 300
  assert vocab.vocab_size == 400
  assert vocab.sentinel_id(0) == 399
  raw = spm.SentencePieceProcessor(model_file=first)
  assert (raw.pad_id(), raw.eos_id(), raw.unk_id(), raw.bos_id()) == (0, 1, 2, -1)
  assert raw.id_to_piece([0, 1, 2]) == ["<pad>", "</s>", "<unk>"]
  ids = vocab.encode(SENTENCE)
  assert vocab.unk_id not in ids
  assert vocab.decode(ids) == SENTENCE

  vocab_lines = (tmp_path / "a" / "spm.vocab").read_text(encoding="utf-8").splitlines()
  assert len(vocab_lines) == 300
  assert vocab_lines[:3] == ["<pad>\t0", "</s>\t0", "<unk>\t0"]


def test_train_reads_sources_lazily_and_reraises_their_errors(tmp_path):
  good = tmp_path / "good.txt"
  good.write_text("plain words for a model\n" * 50, encoding="utf-8")
  bad = tmp_path / "zz_bad.txt"
  bad.write_bytes(b"fine\n\xff\n")
  docs = sources.local_documents([str(good), str(bad)])
  with pytest.raises(ValueError, match=r"zz_bad\.txt, line 2"):
    vocabularies.train_sentencepiece(docs, str(tmp_path / "m"), 20)


def test_train_empty_corpus_raises(tmp_path):
  with pytest.raises(ValueError, match="no non-blank text"):
    vocabularies.train_sentencepiece(["", "  \n\t", "\n"], str(tmp_path / "m"), 100)
  with pytest.raises(ValueError, match="no non-blank text"):
    vocabularies.train_sentencepiece([], str(tmp_path / "m"), 100)
  assert not (tmp_path / "m.model").exists()


def test_train_vocab_too_large_suggests_smaller_size(tmp_path):
  docs = ["a tiny corpus", "of three short lines", "cannot fill a big vocabulary"]
  with pytest.raises(ValueError, match=r"vocab_size=5000 is too large.*vocab_size <= \d+"):
    vocabularies.train_sentencepiece(docs, str(tmp_path / "m"), 5000)


def test_train_rejects_unknown_model_type(tmp_path):
  with pytest.raises(ValueError, match="unigram, bpe, char, word"):
    vocabularies.train_sentencepiece(["x"], str(tmp_path / "m"), 100,
                                     model_type="wordpiece")


def test_train_splits_documents_into_lines(tmp_path):
  # One document of 2000 lines is 90 KB: whole, it exceeds max_sentence_length and
  # SentencePiece would skip it; line by line it trains.
  line = "lorem ipsum dolor sit amet consectetur adipiscing elit sed do"
  document = "\n".join(itertools.repeat(line, 2000))
  path = vocabularies.train_sentencepiece([document], str(tmp_path / "m"), 20)
  vocab = SentencePieceVocabulary(path, extra_ids=0)
  assert vocab.decode(vocab.encode(line)) == line
