"""The laptop-scale study: the paper's pipeline on one CPU, on a synthetic world.

The world (facts, corpus text, prompted task families) is `arch_objective.data.world`,
a data source like the others, which `gin/local.gin` reads too. Here:

  run.py     the stages: pretrain, zero-shot, MT-F, NC-A, ceilings; resumable
  report.py  results.md, the figures
  scale.py   the study at several widths, the paper's contrasts across them, and two
             finished studies compared per example

`run_study`, `load_preset`, `register_gin`, `StudyConfig` and `PRESETS` are `run`'s,
imported on first use, so that importing the package costs nothing until then.
"""
import importlib

_RUN_NAMES = ("run_study", "load_preset", "register_gin", "StudyConfig", "PRESETS")
__all__ = list(_RUN_NAMES)


def __getattr__(name):
  if name in _RUN_NAMES:
    return getattr(importlib.import_module("arch_objective.study.run"), name)
  raise AttributeError(f"module 'arch_objective.study' has no attribute {name!r}")
