"""Host memory: keep the C allocator's freed buffers for reuse instead of returning them.

On the CPU backend XLA allocates each step's activations, gradients and logits with the
C library's `malloc` from its worker threads. glibc gives each thread an arena of its own,
serves large blocks with `mmap` and hands freed memory back to the kernel, so every step
maps its buffers afresh and pays a page fault (and a zeroed page) for each 4 KiB it
touches: about 169,000 faults per ED `small` training step on 8 x (64 + 64) tokens.
`keep_freed_memory()` tells glibc (`mallopt`) to use one arena, never `mmap` for large
blocks and never trim the heap, so a step reuses the pages earlier steps mapped: no faults
once the heap has grown to the step's peak (a few steps). The cost is that the process
keeps its peak host memory until it exits, as a caching allocator does.

The `arch-objective` command calls it first thing; a library user may call it before the
first JAX computation (threads that have already allocated keep their arenas). It does
nothing on other C libraries, or with `ARCH_OBJECTIVE_HOST_MEMORY=system` in the
environment.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os
import sys

from arch_objective.errors import UserError

ENV = "ARCH_OBJECTIVE_HOST_MEMORY"

# glibc's mallopt parameters (malloc.h).
_M_TRIM_THRESHOLD = -1
_M_MMAP_MAX = -4
_M_ARENA_MAX = -8
_NEVER_TRIM = 2 ** 31 - 1        # an int: the largest trim threshold mallopt takes

_applied = None


def keep_freed_memory() -> bool:
  """Set glibc's allocator to reuse freed memory (see the module docstring). Returns True
  when the settings are in effect (now or from an earlier call), False where they do not
  apply: not Linux with glibc, or `ARCH_OBJECTIVE_HOST_MEMORY=system`."""
  global _applied
  if _applied is not None:
    return _applied
  setting = os.environ.get(ENV, "reuse").strip().lower()
  if setting not in ("reuse", "system"):
    raise UserError(f"{ENV} must be 'reuse' (the default) or 'system', found {setting!r}.")
  _applied = False
  if setting == "system" or not sys.platform.startswith("linux"):
    return _applied
  try:
    libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    mallopt = libc.mallopt
    libc.gnu_get_libc_version               # glibc only: musl has no arenas to set
  except (OSError, AttributeError):
    return _applied
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  _applied = all(mallopt(param, value) == 1 for param, value in (
      (_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _NEVER_TRIM)))
  return _applied
