"""An embedded, seeded English-like corpus and a SentencePiece vocabulary trained on it.

The benchmarks need text whose tokenisation costs what real text costs, without a
download. Words are drawn from a Zipfian lexicon: ~130 common English words at the top
ranks, then pronounceable pseudo-words of 1-4 syllables ("choun", "deadootsaick", ...),
which a 2000-piece unigram model trained on them splits into ~1.85 pieces a word.
Sentences of 6-20 words form paragraphs of 2-5 sentences joined by "\\n" (C4's layout),
in documents of 100-400 words:

  >>> next(documents(1))[:45]
  'Look choun deadootsaick the a eengweerdoor th'
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Iterator

import numpy as np

from arch_objective.data import vocabularies

_COMMON_WORDS = (
    "the of and to a in is that it was for on are as with his they at be this from have "
    "or by one had not but what all were when we there can an your which their said if "
    "do will each about how up out them then she many some so these would other into has "
    "more her two like him see time could no make than first been its who now people my "
    "made over did down only way find use may water long little very after words called "
    "just where most know get through back much before go good new write our used me man "
    "too any day same right look think also around another came come work three word must "
    "because does part even place well").split()
_ONSETS = ("", "", "b", "c", "d", "f", "g", "h", "l", "m", "n", "p", "r", "s", "t", "v", "w",
           "br", "ch", "cl", "dr", "fr", "gr", "pl", "pr", "sh", "st", "th", "tr")
_VOWELS = ("a", "e", "i", "o", "u", "ai", "ea", "ee", "ou", "oo")
_CODAS = ("", "", "", "n", "r", "s", "t", "l", "m", "nd", "ng", "st", "ck")

LEXICON_SIZE = 8000
DOCUMENT_WORDS = (100, 400)
SENTENCE_WORDS = (6, 20)
PARAGRAPH_SENTENCES = (2, 5)


def lexicon(size: int = LEXICON_SIZE, seed: int = 0) -> list[str]:
  """`size` distinct words, most frequent first: common English words, then pseudo-words."""
  rng = np.random.default_rng(seed)
  words = list(_COMMON_WORDS)
  seen = set(words)
  while len(words) < size:
    syllables = int(rng.choice([1, 1, 2, 2, 2, 3, 3, 4]))
    word = "".join(_ONSETS[rng.integers(len(_ONSETS))] + _VOWELS[rng.integers(len(_VOWELS))]
                   + _CODAS[rng.integers(len(_CODAS))] for _ in range(syllables))
    if word not in seen:
      seen.add(word)
      words.append(word)
  return words


def documents(num_documents: int, seed: int = 0) -> Iterator[str]:
  """`num_documents` seeded documents (paragraphs separated by "\\n")."""
  words = lexicon(seed=seed)
  weights = 1.0 / np.arange(1, len(words) + 1)
  weights /= weights.sum()
  rng = np.random.default_rng([seed, 1])
  for _ in range(num_documents):
    ids = rng.choice(len(words), size=int(rng.integers(*DOCUMENT_WORDS, endpoint=True)),
                     p=weights)
    paragraphs, sentences, start = [], [], 0
    paragraph_size = int(rng.integers(*PARAGRAPH_SENTENCES, endpoint=True))
    while start < len(ids):
      size = int(rng.integers(*SENTENCE_WORDS, endpoint=True))
      sentence = " ".join(words[i] for i in ids[start:start + size])
      sentences.append(sentence[:1].upper() + sentence[1:] + ".")
      start += size
      if len(sentences) == paragraph_size or start >= len(ids):
        paragraphs.append(" ".join(sentences))
        sentences = []
        paragraph_size = int(rng.integers(*PARAGRAPH_SENTENCES, endpoint=True))
    yield "\n".join(paragraphs)


def write_jsonl(texts: Iterable[str], path: str) -> str:
  """`{"text": ...}` per line; returns `path`."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w", encoding="utf-8") as f:
    for text in texts:
      f.write(json.dumps({"text": text}) + "\n")
  return path


def train_vocabulary(texts: Iterable[str], model_prefix: str, pieces: int) -> str:
  """A T5-convention SentencePiece model (PAD 0, EOS 1, UNK 2) of `pieces` pieces."""
  return vocabularies.train_sentencepiece(texts, model_prefix, pieces)
