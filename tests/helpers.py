"""Shared by the tests: the real data under ../shared/data, a job of several processes
on 127.0.0.1 joined with jax.distributed (a multi-host run on one machine), small models
and parameters, and the plain form of the data pipeline's positioned stages."""
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
CORPUS = SHARED / "pretrain" / "c4_sample.jsonl"
VOCAB = SHARED / "vocab" / "t5_spiece.model"

needs_data = pytest.mark.skipif(not CORPUS.exists() or not VOCAB.exists(),
                                reason=f"shared test data not found under {SHARED}")


def one_layer_model(arch: str, vocab_size: int):
  """A `tiny` model with one layer per stack (fast to compile) and an untied output
  layer (a random model's greedy continuation does not just repeat its input token), in
  float32: what the scoring and harness tests compare against their references."""
  from arch_objective import build_model
  return build_model(arch, "tiny", dtype="float32", num_encoder_layers=1,
                     num_decoder_layers=1, logits_via_embedding=False, vocab_size=vocab_size)


def run_processes(script: str, argv: list, count: int = 2, devices_per_process: int = 2,
                  timeout: int = 300) -> list[dict]:
  """Run `script` (which calls `partitioning.initialize_distributed()` and prints
  `RESULT<json>`) as process 0..count-1 of one job; returns each process's JSON, in
  process order. A process that fails fails the test with its stderr."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3",
             XLA_FLAGS=f"--xla_force_host_platform_device_count={devices_per_process}",
             ARCH_OBJECTIVE_COORDINATOR=f"127.0.0.1:{port}",
             ARCH_OBJECTIVE_NUM_PROCESSES=str(count))
  code = f"import sys; sys.argv = ['x'] + {[str(a) for a in argv]!r}\n" + textwrap.dedent(
      script)
  procs = [subprocess.Popen([sys.executable, "-c", code], cwd=str(ROOT), text=True,
                            env=dict(env, ARCH_OBJECTIVE_PROCESS_ID=str(i)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
           for i in range(count)]
  outs = []
  for p in procs:
    stdout, stderr = p.communicate(timeout=timeout)
    assert p.returncode == 0, stderr[-3000:]
    outs.append(json.loads(stdout.split("RESULT", 1)[1]))
  return outs


def unpositioned(positioned):
  """The plain form of a `*_positioned` stage of the data pipeline (which reads
  (document, source position) pairs and yields what it makes with where a resume restarts
  it): `unpositioned(f)(documents, ...)` is `f` over `documents`, each at no position,
  yielding each chunk of its (chunk, where) pairs, or each `chunking.Tagged` example or
  row as a plain dict."""
  from arch_objective.objectives import chunking

  def plain(documents, *args, **kwargs):
    for item in positioned(((doc, None) for doc in documents), *args, **kwargs):
      yield dict(item) if isinstance(item, chunking.Tagged) else item[0]
  return plain


def random_params(model, seed: int):
  """Parameters of `model`'s shapes drawn like its initialisers (unit-variance
  activations), in numpy: no XLA compilation, so the conversion tests stay fast."""
  import numpy as np
  from arch_objective.convert import param_tree
  rng = np.random.default_rng(seed)
  out = {}
  for name, shape in param_tree.model_shapes(model).items():
    if name.endswith("/scale"):
      value = 1.0 + 0.1 * rng.standard_normal(shape)
    elif name.endswith("/embedding"):
      value = rng.standard_normal(shape)
    elif name.endswith("/rel_embedding"):
      value = rng.uniform(-0.5, 0.5, shape)
    else:
      value = rng.standard_normal(shape) / np.sqrt(shape[0])
    out[name] = value.astype(np.float32)
  return param_tree.unflatten(out)
