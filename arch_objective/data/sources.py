"""Documents, as plain Python strings, from the corpora the study reads.

Every source yields `str` documents one at a time and can count what it read into a
`CorpusStats`. Training reads each host's share of a corpus with positions: a
`*_positioned` source yields (document, position) pairs, and reading again from a
position continues at that document without reading anything before it.

- `local_positioned`: a share (`byte_share`, a contiguous byte range) of local files,
  JSON Lines (`.jsonl`, `.json`: one object per line, the text in `field`) or UTF-8
  text, one document per line (`layout="line"`) or per blank-line-separated paragraph
  (`layout="paragraph"`);
- `tfds_positioned`: a share (a contiguous range of example indices) of a prepared
  TFDS split, the paper's `c4/en`;
- `local_documents` and `jsonl_documents`: every document of local files, in order
  (the text a vocabulary is trained on, the study's corpus).

For example, with `a.txt` holding `"one\\n\\ntwo\\n"`:

  >>> stats = CorpusStats()
  >>> list(local_documents("a.txt", stats=stats))
  ['one', 'two']
  >>> stats
  CorpusStats(documents=2, empty_skipped=1, files=['a.txt'])
  >>> list(local_documents("a.txt", layout="paragraph"))
  ['one', 'two']
  >>> list(local_positioned("a.txt", shard_index=1, num_shards=2))
  [('two', {'file': 0, 'byte': 5, 'n': 0})]

Files are decoded as strict UTF-8; a bad byte sequence is an error naming the file and
line, never a silent replacement character.
"""
from __future__ import annotations

import dataclasses
import glob
import json
import operator
import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence, Union

from arch_objective.errors import MissingFile, UserError

Patterns = Union[str, Sequence[str]]


@dataclasses.dataclass
class CorpusStats:
  """What a source read: filled in while its documents are consumed.

  Attributes:
    documents: documents yielded (of this host's share, for a sharded read).
    empty_skipped: documents skipped because they were empty or whitespace-only.
    files: the files read, in order. A TFDS source adds one entry naming the dataset
      and split, e.g. `tfds:c4/en:3.1.0/train`.
  """
  documents: int = 0
  empty_skipped: int = 0
  files: list[str] = dataclasses.field(default_factory=list)


def _count(stats: Optional[CorpusStats], text: str) -> bool:
  """Records `text` in `stats`; returns whether it is a document worth yielding."""
  if text.strip():
    if stats is not None:
      stats.documents += 1
    return True
  if stats is not None:
    stats.empty_skipped += 1
  return False


# ---------------------------------------------------------------------------
# Local files.
# ---------------------------------------------------------------------------


def expand_patterns(patterns: Patterns) -> list[str]:
  """Glob each pattern (with `~` expanded) into a list of files.

  The matches of each pattern are sorted; the patterns keep their order, and a file
  matched twice appears once, at its first place. `**` matches across folders.

    >>> expand_patterns(["data/b*.txt", "data/a.txt", "data/*.txt"])
    ['data/b1.txt', 'data/b2.txt', 'data/a.txt', 'data/c.txt']

  Raises:
    FileNotFoundError: a pattern matches no file.
    ValueError: no pattern is given.
  """
  if isinstance(patterns, (str, os.PathLike)):
    patterns = [patterns]
  patterns = [os.fspath(p) for p in patterns]
  if not patterns:
    raise UserError("No file pattern given: pass a path or glob such as "
                    "'corpus/*.jsonl'.")
  files: list[str] = []
  seen: set[str] = set()
  for pattern in patterns:
    matches = sorted(glob.glob(os.path.expanduser(pattern), recursive=True))
    regular = [m for m in matches if os.path.isfile(m)]
    if not regular:
      if matches:
        found = f"only folders ({', '.join(matches[:3])})"
        fix = f"match the files inside, e.g. '{pattern.rstrip('/')}/*'"
      elif "://" in pattern:
        found = "nothing"
        fix = ("local sources read local files only; for a corpus on remote "
               "storage use the tfds source with --tfds_data_dir, or copy the "
               "files to local disk")
      else:
        found = "nothing"
        fix = "check the path (relative paths start from the current folder)"
      raise MissingFile(
          f"Corpus pattern {pattern!r} matches no file; expected at least one, "
          f"found {found}. Fix: {fix}.")
    for match in regular:
      if match not in seen:
        seen.add(match)
        files.append(match)
  return files


# A reader takes (path, stats, begin, end, resume) and yields (document, byte offset of
# its first line): the documents whose first line starts in [begin, end) (the whole file
# with the defaults), or, with `resume`, those from the document starting at that
# offset on (then `begin` is ignored).
Reader = Callable[..., Iterator[tuple[str, int]]]


def _line_start(f, begin: int) -> int:
  """Offset of the first line starting at or after `begin` (a line that starts before it
  belongs to the share before)."""
  if begin <= 0:
    return 0
  f.seek(begin - 1)
  if f.read(1) != b"\n":
    f.readline()
  return f.tell()


def _previous_line_blank(f, offset: int) -> bool:
  """Whether the line ending just before `offset` (a line start) is blank."""
  if offset <= 0:
    return True
  pos, tail = offset - 1, b""     # f[offset - 1] is the previous line's "\n"
  while pos > 0:
    step = min(4096, pos)
    f.seek(pos - step)
    block = f.read(step)
    cut = block.rfind(b"\n")
    tail = (block[cut + 1:] if cut >= 0 else block) + tail
    if tail.strip() or cut >= 0:
      break
    pos -= step
  return not tail.strip()


def _decoded_lines(path: str, begin: int = 0, end: Optional[int] = None,
                   resume: Optional[int] = None) -> Iterator[tuple[str, int, str]]:
  """Yields (where, byte offset, line without its line break) of a UTF-8 file, for the
  lines starting in [begin, end), or from `resume` on. `where` names the line for
  errors: "line N" when read from the start, else "the line at byte B"."""
  with open(path, "rb") as f:
    offset = resume if resume is not None else _line_start(f, begin)
    f.seek(offset)
    number = 0 if offset == 0 else None
    while end is None or offset < end:
      raw = f.readline()
      if not raw:
        break
      where = f"line {number + 1}" if number is not None else f"the line at byte {offset}"
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        raise UserError(
            f"{path}, {where}: not valid UTF-8 ({e.reason} at byte "
            f"{e.start} of the line: {raw[max(0, e.start - 10):e.start + 10]!r}). "
            f"Corpus files must be UTF-8: re-encode it, e.g. "
            f"`iconv -f latin1 -t utf-8 {path}`.") from None
      if offset == 0 and line.startswith("\ufeff"):
        line = line[1:]
      if line.endswith("\n"):
        line = line[:-2] if line.endswith("\r\n") else line[:-1]
      yield where, offset, line
      offset += len(raw)
      if number is not None:
        number += 1


def _line_layout(path: str, stats: Optional[CorpusStats], begin: int = 0,
                 end: Optional[int] = None, resume: Optional[int] = None
                 ) -> Iterator[tuple[str, int]]:
  """One document per line."""
  for _, offset, line in _decoded_lines(path, begin, end, resume):
    if _count(stats, line):
      yield line, offset


def _paragraph_layout(path: str, stats: Optional[CorpusStats], begin: int = 0,
                      end: Optional[int] = None, resume: Optional[int] = None
                      ) -> Iterator[tuple[str, int]]:
  """Documents separated by one or more blank lines; lines joined with "\\n". A
  paragraph belongs to the share its first line starts in."""
  skipping = False
  if resume is None and begin > 0:
    with open(path, "rb") as f:
      first = _line_start(f, begin)
      skipping = not _previous_line_blank(f, first)   # mid-paragraph: not ours
  paragraph: list[str] = []
  first_offset = 0
  for _, offset, line in _decoded_lines(path, begin, None, resume):
    if line.strip():
      if skipping:
        continue
      if not paragraph:
        if end is not None and offset >= end:
          return
        first_offset = offset
      paragraph.append(line)
      continue
    skipping = False
    if paragraph:
      text = "\n".join(paragraph)
      paragraph = []
      if _count(stats, text):
        yield text, first_offset
    elif end is not None and offset >= end:
      return
  if paragraph:
    text = "\n".join(paragraph)
    if _count(stats, text):
      yield text, first_offset


LAYOUTS: dict[str, Reader] = {
    "line": _line_layout,
    "paragraph": _paragraph_layout,
}


def _layout_reader(layout: str) -> Reader:
  if layout not in LAYOUTS:
    raise UserError(f"Unknown text layout {layout!r}; valid layouts: "
                    f"{', '.join(sorted(LAYOUTS))}.")
  return LAYOUTS[layout]


def _read_files(files: list[str], reader: Reader,
                stats: Optional[CorpusStats]) -> Iterator[str]:
  for path in files:
    if stats is not None:
      stats.files.append(path)
    for text, _ in reader(path, stats):
      yield text


def _jsonl_reader(field: str) -> Reader:
  """Reader of JSON Lines files taking the text in `field`."""

  def read(path: str, stats: Optional[CorpusStats], begin: int = 0,
           end: Optional[int] = None, resume: Optional[int] = None
           ) -> Iterator[tuple[str, int]]:
    for where, offset, line in _decoded_lines(path, begin, end, resume):
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError as e:
        raise UserError(
            f"{path}, {where}: not JSON ({e.msg} at column {e.colno}); "
            f"found {line[:60]!r}. JSON Lines files hold one JSON object per line; "
            f"give plain text files a .txt extension.") from None
      if not isinstance(record, dict):
        raise UserError(
            f"{path}, {where}: expected a JSON object with a {field!r} field, "
            f"found a {type(record).__name__}.")
      if field not in record:
        keys = sorted(record)
        text_keys = [k for k in keys if isinstance(record[k], str)]
        hint = (f", e.g. field={text_keys[0]!r}" if text_keys else "")
        raise UserError(
            f"{path}, {where}: no field {field!r}; the keys found are "
            f"{keys}. Choose the field holding the text with the `field` option"
            f"{hint}.")
      text = record[field]
      if not isinstance(text, str):
        raise UserError(
            f"{path}, {where}: field {field!r} must be a string, found "
            f"{type(text).__name__} {str(text)[:40]!r}. Choose a text field with "
            f"the `field` option.")
      if _count(stats, text):
        yield text, offset

  return read


def jsonl_documents(patterns: Patterns, field: str = "text",
                    stats: Optional[CorpusStats] = None) -> Iterator[str]:
  """Documents from JSON Lines files: one object per line, the text in `field`.

  `{"text": "a"}\\n\\n{"text": " "}\\n{"text": "b", "id": 7}\\n` gives `['a', 'b']`:
  blank lines are ignored, the whitespace-only text is skipped and counted.

  Raises:
    FileNotFoundError: a pattern matches no file (at the call).
    ValueError: a line that is not UTF-8 or not a JSON object, a missing `field` or a
      value that is not a string (when read); each names the file and line.
  """
  return _read_files(expand_patterns(patterns), _jsonl_reader(field), stats)


JSONL_EXTENSIONS = (".jsonl", ".json")


def local_documents(patterns: Patterns, field: str = "text", layout: str = "line",
                    stats: Optional[CorpusStats] = None) -> Iterator[str]:
  """Documents from local files, read as JSON Lines or text according to extension.

  `.jsonl` and `.json` files are read as `jsonl_documents(field=field)` reads them; any
  other file as UTF-8 text in `layout`: "line" (one document per line, line breaks
  removed from line ends) or "paragraph" (documents separated by one or more blank
  lines; the lines of a paragraph joined with "\\n"). A text file holding
  `"a\\nb c\\n\\n\\nd\\n   \\ne\\n"` gives `['a', 'b c', 'd', 'e']` with `layout="line"` (3
  blank lines skipped and counted) and `['a\\nb c', 'd', 'e']` with `layout="paragraph"`.
  Files are read in `expand_patterns` order.

  Raises:
    FileNotFoundError: a pattern matches no file (at the call).
    ValueError: an unknown layout (at the call); a line that is not UTF-8, or a JSON
      Lines error as `jsonl_documents` names it (when read).
  """
  return _read_files(expand_patterns(patterns), _local_reader(field, layout), stats)


def _local_reader(field: str, layout: str) -> Reader:
  text_reader = _layout_reader(layout)
  json_reader = _jsonl_reader(field)

  def read(path: str, stats: Optional[CorpusStats], *args) -> Iterator[tuple[str, int]]:
    if os.path.splitext(path)[1].lower() in JSONL_EXTENSIONS:
      return json_reader(path, stats, *args)
    return text_reader(path, stats, *args)

  return read


def byte_share(files: Sequence[str], index: int, count: int
               ) -> list[tuple[int, int, Optional[int]]]:
  """Host `index` of `count`'s share of local files: `(file index, begin, end)` byte
  ranges covering the `index`-th of `count` equal parts of the files' concatenated
  bytes. A document belongs to the share its first line starts in, so the shares are
  disjoint and together hold every document; each host reads only its own bytes (plus
  the rest of its last document)."""
  _check_shard(index, count)
  sizes = [os.path.getsize(f) for f in files]
  total = sum(sizes)
  lo, hi = total * index // count, total * (index + 1) // count
  ranges, start = [], 0
  for i, size in enumerate(sizes):
    begin, end = max(lo - start, 0), min(hi - start, size)
    if begin < end or (size == 0 and lo <= start < hi):
      ranges.append((i, begin, None if hi - start >= size else end))
    start += size
  return ranges


def local_positioned(patterns: Patterns, field: str = "text", layout: str = "line", *,
                     shard_index: int = 0, num_shards: int = 1,
                     start: Optional[dict] = None, stats: Optional[CorpusStats] = None
                     ) -> Iterator[tuple[str, dict]]:
  """(document, position) of host `shard_index`'s share (`byte_share`) of local files.

  A position `{"file": i, "byte": b, "n": n}` names the document's file, the byte its
  first line starts at, and how many documents of the share came before it; reading
  again with `start=position` continues at that document without reading anything
  before it. With one shard the documents are `local_documents`'s, in its order.
  """
  files = expand_patterns(patterns)
  reader = _local_reader(field, layout)
  n = int(start["n"]) if start else 0
  for file_index, begin, end in byte_share(files, shard_index, num_shards):
    if start and file_index < start["file"]:
      continue
    resume = int(start["byte"]) if start and file_index == start["file"] else None
    if stats is not None:
      stats.files.append(files[file_index])
    for text, offset in reader(files[file_index], stats, begin, end, resume):
      yield text, {"file": file_index, "byte": offset, "n": n}
      n += 1


# ---------------------------------------------------------------------------
# Dataset libraries.
# ---------------------------------------------------------------------------

C4_VERSIONS = ("3.1.0", "2.3.1", "2.3.0", "2.2.1", "2.2.0")  # the paper used 2.2.0
# The default c4/en version: the newest this TensorFlow Datasets knows.
C4_VERSION = C4_VERSIONS[0]


def tfds_positioned(name: str = "c4/en", version: str = C4_VERSION, split: str = "train",
                    data_dir: Optional[str] = None, field: str = "text", *,
                    shard_index: int = 0, num_shards: int = 1, start: Optional[dict] = None,
                    stats: Optional[CorpusStats] = None) -> Iterator[tuple[str, dict]]:
  """(document, position) of host `shard_index`'s share of a prepared TFDS split: the
  `shard_index`-th of `num_shards` contiguous ranges of example indices, read with an
  absolute `ReadInstruction`, so TFDS opens only the files that hold them. A position
  `{"index": i}` is the example's index in the split; `start=position` continues there.
  Files are read one after the other (no interleaving), so the documents come in index
  order whatever the range: TFDS's default interleaves 16 files, an order that changes
  with where a read starts."""
  _check_shard(shard_index, num_shards)
  builder = _tfds_builder(name, version, data_dir, field)
  source = f"tfds:{name}:{version}/{split}"
  first = int(start["index"]) if start else 0
  if num_shards == 1 and not first:
    examples = _tfds_dataset(builder, name, version, split, data_dir, sequential=True)
  else:
    import tensorflow_datasets as tfds
    if "[" in split:
      raise UserError(f"TFDS split {split!r}: a sharded or resumed read needs a whole "
                      f"split name (e.g. 'train'); it takes its own range of it.")
    _tfds_dataset(builder, name, version, split, data_dir)  # prepared?
    total = builder.info.splits[split].num_examples
    lo, hi = total * shard_index // num_shards, total * (shard_index + 1) // num_shards
    first = max(first, lo)
    if first >= hi:
      return
    instruction = tfds.core.ReadInstruction(split, from_=first, to=hi, unit="abs")
    examples = tfds.as_numpy(builder.as_dataset(
        split=instruction, shuffle_files=False,
        read_config=tfds.ReadConfig(interleave_cycle_length=1)))
  for text, index in _tfds_texts(examples, source, field, stats):
    yield text, {"index": first + index}


def _tfds_builder(name: str, version: str, data_dir: Optional[str], field: str):
  import tensorflow_datasets as tfds

  try:
    builder = tfds.builder(f"{name}:{version}", data_dir=data_dir)
  except AssertionError as e:  # TFDS's way of rejecting a version.
    raise UserError(f"TFDS cannot load {name} at version {version!r}: {e} "
                    f"Choose one of those versions (c4: {', '.join(C4_VERSIONS)}; "
                    f"the paper used 2.2.0).") from None
  features = builder.info.features
  if field not in features:
    raise UserError(f"TFDS dataset {name}:{version} has no feature {field!r}; its "
                    f"features are {sorted(features.keys())}. Choose the text "
                    f"feature with the `field` option.")
  return builder


def _tfds_dataset(builder, name: str, version: str, split: str, data_dir: Optional[str],
                  sequential: bool = False):
  import tensorflow_datasets as tfds

  read_config = tfds.ReadConfig(interleave_cycle_length=1) if sequential else None
  try:
    dataset = builder.as_dataset(split=split, shuffle_files=False, read_config=read_config)
  except AssertionError as e:
    if builder.is_prepared():
      raise
    looked = data_dir if data_dir is not None else "TFDS's default data_dir"
    raise UserError(
        f"TFDS dataset {name}:{version} is not prepared in {looked} (no files in "
        f"{builder.data_dir}). c4 is not downloaded on the fly: it must be prepared "
        f"beforehand with apache_beam (`tfds build {name}:{version} "
        f"--beam_pipeline_options=...`, a large distributed job) or copied from "
        f"an existing prepared copy, and pointed to with --tfds_data_dir "
        f"(data_dir=...), the folder that holds {name}/{version}/.") from e
  return tfds.as_numpy(dataset)


def _tfds_texts(examples: Iterable[dict[str, Any]], source: str, field: str,
                stats: Optional[CorpusStats]) -> Iterator[tuple[str, int]]:
  """(text, index in `examples`) of each example worth yielding (`_count`)."""
  if stats is not None:
    stats.files.append(source)
  for index, example in enumerate(examples):
    value = example[field]
    if not isinstance(value, bytes):
      raise UserError(f"{source}, example {index}: feature {field!r} must be text, "
                      f"found {type(value).__name__}. Choose a text feature with "
                      f"the `field` option.")
    try:
      text = value.decode("utf-8")
    except UnicodeDecodeError as e:
      raise UserError(f"{source}, example {index}: feature {field!r} is not valid "
                      f"UTF-8 ({e.reason} at byte {e.start}).") from None
    if _count(stats, text):
      yield text, index


def _check_shard(index: int, count: int) -> tuple[int, int]:
  try:
    index, count = operator.index(index), operator.index(count)
  except TypeError:
    raise UserError(f"shard index and count must be integers; found index="
                    f"{index!r}, count={count!r}.") from None
  if count < 1 or not 0 <= index < count:
    raise UserError(f"shard needs 0 <= index < count; found index={index}, "
                    f"count={count}. With N hosts use count=N and index="
                    f"jax.process_index().")
  return index, count
