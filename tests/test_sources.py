"""Tests of `arch_objective.data.sources` on small files with literal expected documents,
the real C4 sample in ../shared/data, and TFDS's mock data."""
import json
import pathlib

import pytest

from arch_objective.data import sources
from arch_objective.data.sources import CorpusStats



@pytest.fixture
def c4_sample(c4_sample_path) -> pathlib.Path:
  """The C4 sample of ../shared/data (conftest's `c4_sample_path`), as a path."""
  return pathlib.Path(c4_sample_path)


def write(path: pathlib.Path, text: str) -> str:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_bytes(text.encode("utf-8"))
  return str(path)


# ---------------------------------------------------------------------------
# Text layouts.
# ---------------------------------------------------------------------------


def test_line_layout_yields_one_document_per_line_and_counts_skipped(tmp_path):
  path = write(tmp_path / "a.txt",
               "alpha beta\n\n   \ngamma\r\n  indented stays\nno final newline")
  stats = CorpusStats()
  docs = list(sources.local_documents(path, stats=stats))
  assert docs == ["alpha beta", "gamma", "  indented stays", "no final newline"]
  assert stats == CorpusStats(documents=4, empty_skipped=2, files=[path])


def test_paragraph_layout_splits_on_blank_lines(tmp_path):
  path = write(tmp_path / "p.txt",
               "\n\np1 first\np1 second\n\n\n\np2 only\n \t \np3 a\np3 b\np3 c")
  stats = CorpusStats()
  docs = list(sources.local_documents(path, layout="paragraph", stats=stats))
  assert docs == ["p1 first\np1 second", "p2 only", "p3 a\np3 b\np3 c"]
  assert stats.documents == 3
  assert stats.empty_skipped == 0


def test_utf8_and_byte_order_mark(tmp_path):
  path = tmp_path / "u.txt"
  path.write_bytes("\ufeffcafé 東京\nnaïve\n".encode("utf-8"))
  assert list(sources.local_documents(str(path))) == ["café 東京", "naïve"]


def test_unknown_layout_lists_valid_layouts(tmp_path):
  path = write(tmp_path / "a.txt", "x\n")
  with pytest.raises(ValueError, match=r"'sentence'.*line, paragraph"):
    sources.local_documents(path, layout="sentence")


def test_non_utf8_line_names_file_and_line(tmp_path):
  path = tmp_path / "latin.txt"
  path.write_bytes(b"fine\nalso fine\ncaf\xe9 au lait\n")
  docs = sources.local_documents(str(path))
  assert next(docs) == "fine"
  with pytest.raises(ValueError, match=r"latin\.txt, line 3: not valid UTF-8"):
    list(docs)


# ---------------------------------------------------------------------------
# JSON Lines.
# ---------------------------------------------------------------------------


def test_jsonl_custom_field_skips_blank_lines_and_counts_empty_texts(tmp_path):
  lines = [json.dumps({"content": "first doc", "id": 1}), "",
           json.dumps({"content": "  ", "id": 2}),
           json.dumps({"content": "second\ndoc", "id": 3}), "   "]
  path = write(tmp_path / "c.jsonl", "\n".join(lines) + "\n")
  stats = CorpusStats()
  docs = list(sources.jsonl_documents(path, field="content", stats=stats))
  assert docs == ["first doc", "second\ndoc"]
  assert stats == CorpusStats(documents=2, empty_skipped=1, files=[path])


def test_jsonl_bad_line_names_file_and_line(tmp_path):
  path = write(tmp_path / "bad.jsonl", '{"text": "ok"}\n\n{"text": oops}\n')
  with pytest.raises(ValueError, match=r"bad\.jsonl, line 3: not JSON"):
    list(sources.jsonl_documents(path))


def test_jsonl_missing_field_names_field_and_keys_found(tmp_path):
  path = write(tmp_path / "m.jsonl", '{"body": "a", "url": "u"}\n')
  with pytest.raises(ValueError) as error:
    list(sources.jsonl_documents(path, field="text"))
  message = str(error.value)
  assert "m.jsonl, line 1" in message
  assert "no field 'text'" in message
  assert "['body', 'url']" in message
  assert "`field` option" in message


@pytest.mark.parametrize("line, found", [('{"text": 3}', "int"),
                                         ('["text"]', "list")])
def test_jsonl_rejects_non_string_text_and_non_objects(tmp_path, line, found):
  path = write(tmp_path / "n.jsonl", line + "\n")
  with pytest.raises(ValueError, match=rf"n\.jsonl, line 1: .*{found}"):
    list(sources.jsonl_documents(path))


# ---------------------------------------------------------------------------
# Patterns and mixed local corpora.
# ---------------------------------------------------------------------------


def test_patterns_expand_sorted_in_pattern_order_without_duplicates(tmp_path):
  for name in ["c.txt", "b2.txt", "a.txt", "b1.txt"]:
    write(tmp_path / name, f"{name[:-4]} one\n{name[:-4]} two\n")
  (tmp_path / "sub.txt").mkdir()  # a folder matching *.txt is not a file
  patterns = [str(tmp_path / "b*.txt"), str(tmp_path / "a.txt"),
              str(tmp_path / "*.txt")]
  files = sources.expand_patterns(patterns)
  assert files == [str(tmp_path / n) for n in ["b1.txt", "b2.txt", "a.txt", "c.txt"]]
  stats = CorpusStats()
  docs = list(sources.local_documents(patterns, stats=stats))
  assert docs == ["b1 one", "b1 two", "b2 one", "b2 two", "a one", "a two",
                  "c one", "c two"]
  assert stats.files == files


def test_patterns_expand_home(tmp_path, monkeypatch):
  monkeypatch.setenv("HOME", str(tmp_path))
  write(tmp_path / "corpus" / "x.txt", "x\n")
  assert sources.expand_patterns("~/corpus/*.txt") == [str(tmp_path / "corpus" / "x.txt")]


def test_pattern_matching_nothing_raises_naming_it(tmp_path):
  write(tmp_path / "exists.txt", "x\n")
  missing = str(tmp_path / "nothing*.jsonl")
  with pytest.raises(FileNotFoundError, match="nothing\\*\\.jsonl"):
    sources.expand_patterns([str(tmp_path / "exists.txt"), missing])
  with pytest.raises(FileNotFoundError, match="missing.txt"):
    sources.local_documents(str(tmp_path / "missing.txt"))
  (tmp_path / "folder").mkdir()
  with pytest.raises(FileNotFoundError, match="only folders"):
    sources.expand_patterns(str(tmp_path / "folder"))


def test_local_documents_dispatch_by_extension(tmp_path):
  jsonl = write(tmp_path / "1.jsonl", '{"body": "from jsonl"}\n')
  json_ = write(tmp_path / "2.json", '{"body": "from json"}\n')
  text = write(tmp_path / "3.txt", "para one\nstill one\n\npara two\n")
  stats = CorpusStats()
  docs = list(sources.local_documents(str(tmp_path / "*"), field="body",
                                      layout="paragraph", stats=stats))
  assert docs == ["from jsonl", "from json", "para one\nstill one", "para two"]
  assert stats.files == [jsonl, json_, text]
  assert stats.documents == 4


# ---------------------------------------------------------------------------
# Sharding.
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("index, count", [(3, 3), (-1, 2), (0, 0), (1.0, 2)])
def test_shares_validate_index_and_count(tmp_path, index, count):
  path = write(tmp_path / "a.txt", "a\n")
  with pytest.raises(ValueError, match="index"):
    sources.byte_share([path], index, count)
  with pytest.raises(ValueError, match="index"):
    next(sources.local_positioned(path, shard_index=index, num_shards=count))


# ---------------------------------------------------------------------------
# Real data: the C4 sample and TFDS.
# ---------------------------------------------------------------------------


def test_c4_sample_gives_300_documents(c4_sample):
  with open(c4_sample, encoding="utf-8") as f:
    expected = [json.loads(line)["text"] for line in f]
  stats = CorpusStats()
  docs = list(sources.local_documents(str(c4_sample), stats=stats))
  assert len(docs) == 300
  assert docs == expected
  assert stats == CorpusStats(documents=300, empty_skipped=0, files=[str(c4_sample)])


def test_tfds_unprepared_data_dir_raises_clear_error(tmp_path):
  with pytest.raises(ValueError) as error:
    next(sources.tfds_positioned("c4/en", "3.1.0", data_dir=str(tmp_path)))
  message = str(error.value)
  assert "not prepared" in message
  assert str(tmp_path) in message
  assert "--tfds_data_dir" in message
  assert "apache_beam" in message


def test_tfds_unknown_version_lists_known_versions(tmp_path):
  with pytest.raises(ValueError, match=r"3\.0\.1.*2\.2\.0"):
    next(sources.tfds_positioned("c4/en", "3.0.1", data_dir=str(tmp_path)))


def test_tfds_missing_feature_lists_features(tmp_path):
  with pytest.raises(ValueError, match=r"no feature 'content'.*'text'"):
    next(sources.tfds_positioned("c4/en", "3.1.0", data_dir=str(tmp_path), field="content"))


def test_tfds_positioned_under_mock_data(tmp_path):
  import tensorflow_datasets as tfds
  with tfds.testing.mock_data(num_examples=5):
    stats = CorpusStats()
    docs = [text for text, _ in sources.tfds_positioned("c4/en", "3.1.0", split="train",
                                                        data_dir=str(tmp_path), stats=stats)]
    reference = [ex["text"].decode("utf-8") for ex in tfds.as_numpy(
        tfds.load("c4/en:3.1.0", split="train", data_dir=str(tmp_path)))]
  assert len(docs) == 5
  assert all(isinstance(d, str) and d.strip() for d in docs)
  assert docs == reference
  assert stats == CorpusStats(documents=5, empty_skipped=0,
                              files=["tfds:c4/en:3.1.0/train"])

