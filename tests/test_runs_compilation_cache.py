"""The persistent compilation cache of the `eval` commands (`evaluation.runs`): where it
lives, how to move or turn it off, and that a second evaluation in a fresh process reads
the programs the first one wrote. No test here touches the user's own cache folder."""
import importlib.util
import json
import os
import pathlib
import subprocess
import sys

import jax
import pytest

from arch_objective.evaluation import runs

ROOT = pathlib.Path(__file__).resolve().parents[1]
ENV = runs.COMPILATION_CACHE_ENV
needs_promptsource = pytest.mark.skipif(importlib.util.find_spec("promptsource") is None,
                                        reason="promptsource is not installed")


def test_default_folder_follows_xdg_then_home_and_the_variable_wins(monkeypatch, tmp_path):
  monkeypatch.delenv(ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert runs.default_compilation_cache_dir() == str(tmp_path / "xdg" / "arch-objective" /
                                                     "jax-cache")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert runs.default_compilation_cache_dir() == str(tmp_path / "home" / ".cache" /
                                                     "arch-objective" / "jax-cache")
  monkeypatch.setenv(ENV, str(tmp_path / "mine"))
  assert runs.default_compilation_cache_dir() == str(tmp_path / "mine")
  monkeypatch.setenv(ENV, "")
  assert runs.default_compilation_cache_dir() == ""


@pytest.fixture
def jax_cache_settings():
  """Put JAX's cache settings back as they were (they are process-wide)."""
  from jax.experimental.compilation_cache import compilation_cache
  names = ("jax_enable_compilation_cache", "jax_compilation_cache_dir",
           "jax_persistent_cache_min_compile_time_secs",
           "jax_persistent_cache_min_entry_size_bytes")
  saved = {name: getattr(jax.config, name) for name in names}
  yield
  compilation_cache.reset_cache()
  for name, value in saved.items():
    jax.config.update(name, value)


def test_use_compilation_cache_sets_the_folder_and_thresholds_or_turns_it_off(
    tmp_path, monkeypatch, jax_cache_settings):
  monkeypatch.delenv(ENV, raising=False)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  folder = runs.use_compilation_cache(None)
  assert folder == str(tmp_path / "xdg" / "arch-objective" / "jax-cache")
  assert jax.config.jax_compilation_cache_dir == folder
  assert jax.config.jax_enable_compilation_cache is True
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  assert jax.config.jax_persistent_cache_min_entry_size_bytes == -1
  assert runs.use_compilation_cache(str(tmp_path / "other")) == str(tmp_path / "other")
  assert jax.config.jax_compilation_cache_dir == str(tmp_path / "other")
  assert runs.use_compilation_cache("") is None
  assert jax.config.jax_enable_compilation_cache is False
  assert jax.config.jax_compilation_cache_dir is None
  with pytest.raises(ValueError, match="compilation_cache_dir must be a folder"):
    runs.use_compilation_cache(0)


def test_eval_runs_take_the_option():
  assert "compilation_cache_dir" in runs.parameters(runs.EVAL_T0)
  assert "compilation_cache_dir" in runs.parameters(runs.EVAL_HARNESS)


# -- two evaluations in fresh processes ------------------------------------------------------

EVAL_SCRIPT = """
import json, sys, time
from jax import monitoring
counts = {}
monitoring.register_event_listener(
    lambda event, **_: counts.__setitem__(event, counts.get(event, 0) + 1))
from arch_objective import cli
start = time.perf_counter()
rc = cli.main(sys.argv[1:])
print(json.dumps({"rc": rc, "seconds": time.perf_counter() - start,
                  "hits": counts.get("/jax/compilation_cache/cache_hits", 0),
                  "misses": counts.get("/jax/compilation_cache/cache_misses", 0),
                  "disabled": counts.get("/jax/compilation_cache/task_disabled_cache", 0)}))
"""


@pytest.fixture(scope="module")
def tiny_model_dir(tmp_path_factory, t5_vocab_path):
  """A model directory of a tiny causal decoder's random parameters at step 3."""
  from arch_objective import build_model, models
  from arch_objective.convert import model_dir
  model = build_model(models.CAUSAL_DECODER, "tiny", dtype="float32")
  params = model.get_initial_variables(
      jax.random.PRNGKey(0), models.default_input_shapes(models.CAUSAL_DECODER, 1, 8))["params"]
  root = tmp_path_factory.mktemp("ckpt") / "cd"
  model_dir.write_model_dir(str(root), models.CAUSAL_DECODER, model.config, params, step=3,
                            vocabulary=t5_vocab_path, vocab_size=32100)
  return str(root)


def _eval_t0(tmp_path, checkpoint, data_dir, name, cache):
  """`arch-objective eval t0` in a fresh process with the cache folder `cache` ('' = off)
  and a home and XDG_CACHE_HOME of its own; returns its counts and seconds."""
  home = tmp_path / f"home_{name}"
  env = dict(os.environ, HOME=str(home), XDG_CACHE_HOME=str(home / "xdg"),
             JAX_PLATFORMS="cpu", **{ENV: cache})
  env.pop("JAX_COMPILATION_CACHE_DIR", None)
  args = ["eval", "t0", "--checkpoint", checkpoint, "--data_dir", str(data_dir),
          "--datasets", "super_glue/rte", "--max_examples", "2", "--inputs_length", "24",
          "--targets_length", "8", "--out", str(tmp_path / f"out_{name}")]
  proc = subprocess.run([sys.executable, "-c", EVAL_SCRIPT, *args], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  result = json.loads(proc.stdout.strip().splitlines()[-1])
  assert result["rc"] == 0
  assert not (home / "xdg").exists() and not (home / ".cache").exists()
  return result, proc.stderr


@needs_promptsource
@pytest.mark.slow
def test_a_second_eval_reads_the_programs_the_first_wrote(tmp_path, tiny_model_dir,
                                                          shared_data):
  data_dir = shared_data / "eval"
  if not (data_dir / "super_glue" / "RTE" / "val.jsonl").is_file():
    pytest.skip(f"SuperGLUE RTE validation file not found under {data_dir}")
  cache = tmp_path / "cache"
  first, err = _eval_t0(tmp_path, tiny_model_dir, data_dir, "first", str(cache))
  assert f"compilation cache: {cache}" in err
  written = sorted(p.name for p in cache.iterdir())
  assert written and first["misses"] > 0 and first["hits"] == 0

  second, _ = _eval_t0(tmp_path, tiny_model_dir, data_dir, "second", str(cache))
  assert second["hits"] >= first["misses"] and second["misses"] == 0
  assert sorted(p.name for p in cache.iterdir()) == written       # nothing new to write
  assert ((tmp_path / "out_first" / "results.json").read_text()
          == (tmp_path / "out_second" / "results.json").read_text())

  off, err = _eval_t0(tmp_path, tiny_model_dir, data_dir, "off", "")
  assert "compilation cache: off" in err
  assert off["hits"] == off["misses"] == 0 and off["disabled"] == 1
  assert sorted(p.name for p in cache.iterdir()) == written
