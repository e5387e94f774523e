"""`host_memory.keep_freed_memory`: after it, repeated JAX steps reuse their buffers'
pages instead of faulting fresh ones in; the opt-out and bad values."""
import os
import subprocess
import sys

import pytest

from arch_objective import host_memory

# A jitted step whose 64 MiB result comes from malloc; the child prints the minor page
# faults per step once the heap has settled (60 warm-up steps; it stops growing by 50).
_CHILD = r"""
import resource, sys
from arch_objective import host_memory
print(host_memory.keep_freed_memory())
import jax, jax.numpy as jnp
f = jax.jit(lambda x, y: jnp.tanh(x @ y))            # a 64 MiB result each call
x = jnp.ones((2048, 64)); y = jnp.ones((64, 8192))
for _ in range(60):
  f(x, y).block_until_ready()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
  f(x, y).block_until_ready()
print((resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before) / 20)
"""


def _faults_per_step(setting: str) -> tuple[str, float]:
  env = dict(os.environ, **{host_memory.ENV: setting})
  out = subprocess.run([sys.executable, "-c", _CHILD], env=env, capture_output=True,
                       text=True, check=True).stdout.split()
  return out[0], float(out[1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
@pytest.mark.slow
def test_kept_memory_removes_the_page_faults_of_each_step():
  applied, kept = _faults_per_step("reuse")
  default, system = _faults_per_step("system")
  assert (applied, default) == ("True", "False")
  # Under the default allocator each step maps its 64 MiB (16,384 pages) afresh; kept,
  # the settled heap's pages are reused (0 faults per step measured).
  assert system > 12000, system
  assert kept < system / 8, (kept, system)


def test_a_bad_setting_is_named(monkeypatch):
  monkeypatch.setattr(host_memory, "_applied", None)
  monkeypatch.setenv(host_memory.ENV, "tcmalloc")
  with pytest.raises(ValueError, match="ARCH_OBJECTIVE_HOST_MEMORY must be 'reuse'.*'tcmalloc'"):
    host_memory.keep_freed_memory()


def test_the_command_names_a_bad_setting_and_stops(monkeypatch, capsys):
  from arch_objective import cli
  monkeypatch.setattr(host_memory, "_applied", None)
  monkeypatch.setenv(host_memory.ENV, "sometimes")
  assert cli.main(["plan", "--arch", "causal_decoder", "--size", "tiny"]) == 2
  assert "ARCH_OBJECTIVE_HOST_MEMORY must be 'reuse'" in capsys.readouterr().err
