"""Shared by the tests: the real data under ../shared/data, a job of several processes
on 127.0.0.1 joined with jax.distributed (a multi-host run on one machine), small models
and parameters, short training runs on the shared corpus, commands run in-process, the
toy sentences, vocabulary and lm-eval tasks, modules imported at first use (so that
collecting the tests stays fast), and the plain form of the data pipeline's positioned
stages."""
import importlib
import importlib.util
import json
import os
import pathlib
import socket
import subprocess
import sys
import textwrap
import types

import numpy as np
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


def random_params(model, seed: int, draw: str = "like_init"):
  """Parameters of `model`'s shapes drawn with numpy: no XLA compilation (flax's
  initialisers take longer than the rest of a test), so the tests stay fast.

  `draw="like_init"` (the conversion tests): like the model's initialisers (unit-variance
  activations; norm scales near 1, embeddings N(0, 1)). `draw="fan_in"` (the scoring and
  harness tests): norm scales 1, every other weight N(0, 1/fan_in)."""
  rng = np.random.default_rng(seed)
  if draw == "fan_in":
    import jax
    from arch_objective import models
    shapes = model.abstract_variables(models.default_input_shapes(model.name, 1, 8, 8, 8))

    def fan_in(path, leaf):
      if path[-1].key == "scale":
        return np.ones(leaf.shape, np.float32)
      fan = int(np.prod(leaf.shape[:-1])) if len(leaf.shape) > 1 else 1
      return rng.normal(0.0, fan ** -0.5, leaf.shape).astype(np.float32)

    return jax.tree_util.tree_map_with_path(fan_in, shapes["params"])
  assert draw == "like_init", draw
  from arch_objective.convert import param_tree
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


# ----------------------------------------------------------------------------------------
# Tiny models, their parameters, and short training runs on the shared corpus
# ----------------------------------------------------------------------------------------
TINY_VOCAB = 64   # the vocabulary of `tiny_model` (what the model and decoding tests use)


def tiny_model(arch: str, **kw):
  """The `tiny` float32 model of `arch` over `TINY_VOCAB` ids (unless `kw` says
  otherwise)."""
  from arch_objective import build_model
  kw.setdefault("vocab_size", TINY_VOCAB)
  kw.setdefault("dtype", "float32")
  return build_model(arch, "tiny", **kw)


def init_params(model, shapes: dict, seed: int = 0):
  """`model`'s initial parameters (its own initialisers, compiled) for input `shapes`."""
  import jax
  return model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"]


def tiny_model_and_params(arch: str, dropout: float):
  """(model, params, batch): the `tiny` float32 model of `arch` over 128 ids with
  `dropout_rate=dropout`, its initial parameters (seed 1), and 8 random rows of 12
  tokens in [2, 128) with a loss on about 80% of positions and ND prefixes of random
  lengths (`testing.synthetic_batch`, seed 0)."""
  from arch_objective import build_model, testing
  model = build_model(arch, "tiny", dtype="float32", dropout_rate=dropout, vocab_size=128)
  batch = testing.synthetic_batch(arch, 8, 12, inputs_length=12, targets_length=12,
                                  vocab_size=128, seed=0, weighted=0.8, prefix="random")
  shapes = {k: v.shape for k, v in batch.items()}
  return model, init_params(model, shapes, seed=1), batch


def local_dataset(task="local_full_lm", batch_size=4, length=64, vocabulary=str(VOCAB), **kw):
  """A `DatasetConfig` of `task` over the shared C4 sample and T5 vocabulary."""
  from arch_objective.training import data, sources
  return data.DatasetConfig(task=task, batch_size=batch_size, length=length,
                            source=sources.LocalCorpus(str(CORPUS)), vocabulary=vocabulary,
                            **kw)


def tiny_float32(arch="causal_decoder", **kw):
  """The `tiny` float32 model of `arch` over the full T5 vocabulary (the training tests')."""
  from arch_objective import build_model
  return build_model(arch, "tiny", dtype="float32", **kw)


def train_run(model_dir, *, model=None, ds=None, steps=2, **kw):
  """`train.train` of `steps` steps into `model_dir`, saving every step: `tiny_float32()`
  on `local_dataset()` at a constant learning rate of 0.01 unless told otherwise."""
  from arch_objective.training import optimizers, train
  kw.setdefault("learning_rate_schedule", optimizers.constant(0.01))
  return train.train(model_dir=str(model_dir), model=model or tiny_float32(),
                     dataset=ds or local_dataset(), train_steps=steps, save_every=1,
                     progress=False, **kw)


# tensorstore's error for a write to a full disk, as orbax re-raises it (`{d}`: the
# checkpoints directory).
TENSORSTORE_ENOSPC = (
    'RESOURCE_EXHAUSTED: Error writing "params.decoder.decoder_norm.scale/0" in OCDBT '
    'database at local file "{d}/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/": '
    'Failed writing: "{d}/3.orbax-checkpoint-tmp/state.orbax-checkpoint-tmp/d/x": No space '
    'left on device [OS error: No space left on device]')


# ----------------------------------------------------------------------------------------
# Commands run in-process
# ----------------------------------------------------------------------------------------
def run_cli(capsys, argv) -> tuple:
  """(exit status, stdout, stderr) of `arch-objective ARGV` run in-process (`cli.main`);
  argparse's SystemExit gives its exit status."""
  from arch_objective import cli
  capsys.readouterr()
  try:
    rc = cli.main(argv)
  except SystemExit as e:        # argparse
    rc = e.code
  out, err = capsys.readouterr()
  return rc, out, err


def one_line(err: str) -> str:
  """The one line of a refusal on stderr (no traceback)."""
  lines = err.strip().splitlines()
  assert len(lines) == 1 and "Traceback" not in err, err[-3000:]
  return lines[0]


# ----------------------------------------------------------------------------------------
# Heavy modules at first use: TensorFlow, seqio, torch, transformers and lm-eval's task
# registry take seconds to import, which collecting the tests (every xdist worker, and the
# fast tier too) would otherwise pay for each module that names them.
# ----------------------------------------------------------------------------------------
def missing(*names: str) -> list:
  """The modules of `names` that are not installed (found without importing them)."""
  out = []
  for name in names:
    try:
      if importlib.util.find_spec(name) is None:
        out.append(name)
    except (ImportError, ValueError):
      out.append(name)
  return out


def requires(*names: str):
  """A skip mark for tests that need the modules `names` (what `pytest.importorskip` at
  the top of a module did, without importing them at collection)."""
  absent = missing(*names)
  return pytest.mark.skipif(bool(absent), reason=f"could not import {', '.join(absent)}")


class LazyModule(types.ModuleType):
  """Module `name`, imported on the first read of a public attribute. A private or dunder
  name (what pytest probes every module global for while collecting: `__test__`, its
  fixture markers) is read from the module only once something else imported it."""

  def __getattr__(self, attr):
    if attr.startswith("_") and self.__name__ not in sys.modules:
      raise AttributeError(attr)
    return getattr(importlib.import_module(self.__name__), attr)


def lazy_import(name: str) -> types.ModuleType:
  """`name` itself if already imported, else a stand-in that imports it at first use."""
  return sys.modules.get(name) or LazyModule(name)


# ----------------------------------------------------------------------------------------
# Made-up sentences, their SentencePiece model, and local lm-eval tasks over them
# ----------------------------------------------------------------------------------------
WORDS = ("apple bread candle desert engine forest garden harbour island jacket kettle "
         "ladder meadow needle orange pencil quarry rabbit saddle tunnel umbrella valley "
         "window yellow zebra bright silent heavy gentle narrow frozen golden hollow "
         "ancient curious eager brave clever wander gather whisper borrow carry travel "
         "listen measure promise wonder quickly slowly loudly rarely softly morning evening "
         "winter summer market village mountain river teacher farmer doctor sailor").split()


def sentences(n=400, seed=0):
  """Made-up sentences over a few hundred words (enough for a 200-piece model)."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    words = rng.choice(WORDS, size=int(rng.integers(5, 12)))
    out.append(" ".join(words).capitalize() + (f" {i}." if i % 3 == 0 else "."))
  return out


def toy_model(arch: str, vocab):
  """`one_layer_model` over the padded size of `vocab` (the `toy_vocab` fixture)."""
  from arch_objective.data import vocabularies
  return one_layer_model(arch, vocabularies.padded_vocab_size(vocab.vocab_size))


def TaskManager(*args, **kwargs):
  """lm-eval's `TaskManager`, imported at first use (`lm_eval.tasks` takes seconds)."""
  from lm_eval.tasks import TaskManager as task_manager
  return task_manager(*args, **kwargs)


def requests_of(kind, args):
  """lm-eval `Instance`s of request type `kind`, one per argument tuple."""
  from lm_eval.api.instance import Instance
  return [Instance(request_type=kind, doc={}, arguments=a, idx=i) for i, a in enumerate(args)]


def write_tasks(directory: pathlib.Path) -> pathlib.Path:
  """Local YAML tasks over JSONL files: toy_mc (multiple choice), toy_rolling
  (loglikelihood_rolling) and toy_generate (generate_until)."""
  directory.mkdir(parents=True, exist_ok=True)
  rows = [{"premise": " ".join(WORDS[i:i + 3]), "hypothesis": WORDS[i + 30], "label": i % 2}
          for i in range(8)]
  mc = directory / "mc.jsonl"
  mc.write_text("".join(json.dumps(r) + "\n" for r in rows))
  text = directory / "text.jsonl"
  text.write_text("".join(json.dumps({"text": " ".join(sentences()[k:k + 6])}) + "\n"
                          for k in range(0, 18, 6)))
  (directory / "toy_mc.yaml").write_text(f"""task: toy_mc
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {mc}
output_type: multiple_choice
validation_split: validation
doc_to_text: "{{{{premise}}}}. Is it {{{{hypothesis}}}}?"
doc_to_target: label
doc_to_choice: ["yes", "no"]
metric_list:
  - metric: acc
""")
  (directory / "toy_rolling.yaml").write_text(f"""task: toy_rolling
dataset_path: json
dataset_kwargs:
  data_files:
    test: {text}
output_type: loglikelihood_rolling
test_split: test
doc_to_text: ""
doc_to_target: "{{{{text}}}}"
metric_list:
  - metric: word_perplexity
  - metric: bits_per_byte
""")
  (directory / "toy_generate.yaml").write_text(f"""task: toy_generate
dataset_path: json
dataset_kwargs:
  data_files:
    validation: {mc}
output_type: generate_until
validation_split: validation
doc_to_text: "{{{{premise}}}}"
doc_to_target: "{{{{hypothesis}}}}"
generation_kwargs:
  until: ["."]
  max_gen_toks: 8
  do_sample: false
metric_list:
  - metric: exact_match
""")
  return directory
