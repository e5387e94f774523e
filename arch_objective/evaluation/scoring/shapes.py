"""The shapes of scoring batches: lengths, row counts, and which rows share a batch.

Pure arithmetic on integers and index lists (no JAX, no token ids), so that the packed
layouts of `scorer` and the benchmark's baselines agree on their shapes:

  pow2, bucket      powers of two (generation batches and their row counts)
  fine_bucket       2^k or 3 x 2^(k-1): at most a third of a bucket is padding
  batch_rows        the rows of one length that fit a token budget
  packed_rows       row counts rounded to a sixteenth of their power of two
  pack              items of given lengths in bins of one capacity (packed rows)
  length_classes    items by the row length they pack into
  deal              rows dealt into parts of one padded shape within a budget
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence


def pow2(n: int) -> int:
  """The least power of two >= n (1 for n <= 1)."""
  return 1 << max(int(n) - 1, 0).bit_length()


def bucket(n: int, minimum: int = 16) -> int:
  """`pow2(n)`, at least `minimum`: 16, 32, 64, ..."""
  return max(minimum, pow2(n))


def fine_bucket(n: int, minimum: int = 1) -> int:
  """The least of 2^k and 3 x 2^(k-1) (1, 2, 3, 4, 6, 8, 12, 16, 24, ...) >= max(n, minimum)."""
  n = max(int(n), minimum, 1)
  power = 1 << (n - 1).bit_length()          # the least power of two >= n
  three_quarters = 3 * power // 4
  return three_quarters if three_quarters >= n and power >= 4 else power


def batch_rows(max_tokens: int, length: int) -> int:
  """The most rows of `length` tokens within `max_tokens`, a power of two (at least 1)."""
  return max(1, 1 << (max(max_tokens // length, 1).bit_length() - 1))


def packed_rows(n: int) -> int:
  """`n` rows rounded up to a multiple of a sixteenth of `pow2(n)` (1, 2, ..., 16, 18, 20,
  ..., 32, 36, 40, ...): at most one row in eight is padding, and batches of similar
  sizes share a shape."""
  step = max(1, pow2(n) // 16)
  return -(-max(int(n), 1) // step) * step


def pack(lengths: Sequence[int], capacity: int) -> list[list[int]]:
  """Indices of `lengths` (each <= `capacity`) in bins of `capacity`: the longest item
  not placed opens a bin, which the shortest ones then fill while they fit. Linear after
  sorting, so that 10^5 prompts pack at once.

  >>> pack([5, 1, 4, 2, 3], 6)
  [[0, 1], [2, 3], [4]]
  """
  order = sorted(range(len(lengths)), key=lambda k: (-lengths[k], k))
  bins, first, last = [], 0, len(order) - 1
  while first <= last:
    k = order[first]
    first += 1
    room, row = capacity - lengths[k], [k]
    while first <= last and lengths[order[last]] <= room:
      room -= lengths[order[last]]
      row.append(order[last])
      last -= 1
    bins.append(row)
  return bins


def length_classes(lengths: Sequence[int], minimum: int, row_tokens: int
                   ) -> dict[int, list[int]]:
  """Item indices by the row length they pack into, shortest class first: every item up
  to `row_tokens` into rows of the longest such item's `fine_bucket` (at least
  `minimum`), a longer one into rows of its own.

  >>> length_classes([3, 9, 20, 5], 4, 16)
  {12: [0, 1, 3], 24: [2]}
  """
  short = [n for n in lengths if n <= row_tokens]
  first = fine_bucket(max(short), minimum) if short else 0
  classes: dict[int, list[int]] = {}
  for k, n in enumerate(lengths):
    classes.setdefault(first if n <= row_tokens else fine_bucket(n, minimum), []).append(k)
  return dict(sorted(classes.items()))


def deal(num_rows: int, fits: Callable[[list], bool], at_least: int = 1,
         weights: Optional[Sequence[float]] = None) -> list:
  """`range(num_rows)` dealt into parts for which `fits(parts)` holds (it checks the
  parts' padded shape against the budgets), so that the parts share one shape with
  little padding: without `weights`, part b takes rows b, b + parts, ... (rows laid out
  in order of size mix evenly); with them, each row, heaviest first, goes to the part
  that weighs least so far (each part's rows in ascending order). Tries `at_least`
  parts (a lower bound from the positions to compute), then about 3% more each time;
  one row a part at most.

  >>> [list(part) for part in deal(5, lambda parts: max(map(len, parts)) <= 2)]
  [[0, 3], [1, 4], [2]]
  """
  parts = max(1, min(int(at_least), num_rows))
  while True:
    if weights is None:
      split = [range(b, num_rows, parts) for b in range(parts)]
    else:
      split, totals = [[] for _ in range(parts)], [0.0] * parts
      for row in sorted(range(num_rows), key=lambda r: (-weights[r], r)):
        lightest = min(range(parts), key=lambda b: (totals[b], b))
        split[lightest].append(row)
        totals[lightest] += weights[row]
      split = [sorted(part) for part in split]
    if parts >= num_rows or fits(split):
      return split
    parts = min(num_rows, parts + max(1, parts // 32))
