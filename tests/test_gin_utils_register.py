"""`gin_utils.register` (the one door for configurables) and the read-back of a parsed
config (`bound`, `bound_values`, `option_bindings`) that `eval --gin_file` builds on."""
import gin
import pytest

from arch_objective.training import gin_utils


def _probe(a=1, b=2, log=None):
  return {"a": a, "b": b, "log": log}


def _other(a=1):
  return a


def test_register_is_idempotent_and_refuses_a_taken_name():
  gin_utils.register({"gin_utils_probe": _probe}, denylist=("log",))
  gin_utils.register({"gin_utils_probe": _probe}, denylist=("log",))   # again: no error
  with pytest.raises(ValueError, match="'gin_utils_probe' is already .*_probe.*_other"):
    gin_utils.register({"gin_utils_probe": _other})
  gin.clear_config()
  with pytest.raises(ValueError):                      # a denied parameter is not bindable
    gin.parse_config(["gin_utils_probe.log = 3"])
  gin.clear_config()


def test_bound_values_and_option_bindings_follow_the_macros():
  gin_utils.register({"gin_utils_probe": _probe}, denylist=("log",))
  gin.clear_config()
  gin.parse_config(["A = 5", "gin_utils_probe.a = %A", "gin_utils_probe.b = 7"])
  try:
    assert gin_utils.bound("gin_utils_probe", "a") == (5, "A")
    assert gin_utils.bound("gin_utils_probe", "b") == (7, None)
    assert gin_utils.bound("gin_utils_probe", "log") == (None, None)
    assert gin_utils.bound_values("gin_utils_probe", ["a", "b"]) == {"a": 5, "b": 7}
    out, feeds = gin_utils.option_bindings("gin_utils_probe", ["a", "b"], {"a": 9, "b": "x"})
    assert out == ["A = 9", "gin_utils_probe.b = 'x'"] and feeds == {"A": "a"}
    gin.parse_config(out)
    assert gin.get_configurable("gin_utils_probe")() == {"a": 9, "b": "x", "log": None}
  finally:
    gin.clear_config()
