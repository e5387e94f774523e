"""The project's own error classes: what a person caused and can fix.

The `arch-objective` command prints a `UserError` as one line and exits 2; any other
exception is a bug (in this package or a library it calls) and keeps its traceback.
`--traceback` (or `ARCH_OBJECTIVE_TRACEBACK=1`) shows the traceback of a user error too.

`UserError` subclasses `ValueError`, so callers that catch `ValueError` (and the tests of
every check) keep working; the two narrower classes keep the built-in kind a caller may
catch as well:

  UserError          a bad option, file, field, dataset or run directory
  MissingFile        a path the user named does not exist (also a FileNotFoundError)
  MissingDependency  an optional extra is not installed (also an ImportError)

`integer_at_least` is the one test of a count a user sets (a step count, a length, a
number of workers).
"""
from __future__ import annotations

import numbers

import numpy as np


class UserError(ValueError):
  """A mistake in what a user gave (an option, a file, a run directory): the message
  names it, says what was expected and what was found."""


class MissingFile(UserError, FileNotFoundError):
  """A file or directory the user named does not exist."""


class MissingDependency(UserError, ImportError):
  """An optional dependency (an install extra) is missing; the message says how to
  install it."""


def integer_at_least(value, minimum: int) -> bool:
  """Whether `value` is an integer (Python's or numpy's; never a bool, which Python
  counts as one) of at least `minimum`: the test behind every count a user sets."""
  return (not isinstance(value, (bool, np.bool_)) and isinstance(value, numbers.Integral)
          and bool(value >= minimum))
