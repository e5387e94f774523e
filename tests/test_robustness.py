"""A run that survives its machines: preemption, one writer per MODEL_DIR, non-finite
states never saved, an unreadable latest checkpoint, resume checks, one-line errors."""
import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from arch_objective import logs
from arch_objective.training import checkpoints, optimizers, run_lock, train

from helpers import CORPUS, ROOT, VOCAB, needs_data, run_processes
from helpers import local_dataset as dataset, tiny_float32 as tiny


# ---------------------------------------------------------------------------
# SIGTERM / SIGINT
# ---------------------------------------------------------------------------
# Trains to `steps`; at step `signal_at` the process sends itself `signal` (what a TPU VM
# does before preemption). Prints each step's loss and the final embedding checksum.
SIGNAL_SCRIPT = """
import json, os, signal, sys
import jax
import numpy as np
from arch_objective import build_model, logs
from arch_objective.training import data, optimizers, sources, train
logs.show_on_stderr()
model_dir, steps, signal_at, signame, corpus, vocab = sys.argv[1:7]
def hook(step, summary):
  print(json.dumps({"step": step, "loss": summary["loss"]}), flush=True)
  if step == int(signal_at):
    os.kill(os.getpid(), getattr(signal, signame))
ds = data.DatasetConfig(task="local_span_corruption", batch_size=4, length=64,
                        source=sources.LocalCorpus(corpus), vocabulary=vocab)
model = build_model("non_causal_decoder", "tiny", dtype="float32", dropout_rate=0.1)
result = train.train(model_dir=model_dir, model=model, dataset=ds, train_steps=int(steps),
                     save_every=100, hooks=[hook], progress=False,
                     learning_rate_schedule=optimizers.constant(0.01))
emb = np.asarray(result.state.params["decoder"]["token_embedder"]["embedding"])
print("RESULT " + json.dumps({"stopped_by": result.stopped_by,
                              "last_checkpoint": result.last_checkpoint,
                              "embedding_bytes": emb.tobytes().hex()}), flush=True)
"""


def _run(args, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  return subprocess.run([sys.executable, "-c", textwrap.dedent(SIGNAL_SCRIPT), *map(str, args)],
                        env=env, capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


def _parse(stdout):
  losses = {json.loads(l)["step"]: json.loads(l)["loss"] for l in stdout.splitlines()
            if l.startswith("{")}
  result = json.loads(stdout.split("RESULT ", 1)[1])
  return losses, result


@needs_data
@pytest.mark.parametrize("signame", ["SIGTERM", "SIGINT"])
@pytest.mark.slow
def test_signal_saves_at_the_step_and_the_resume_is_bit_identical(tmp_path, signame):
  """Straight to 6 vs. a signal at step 3 (no periodic save before 100) then a resume to
  6: the run exits 0 with a checkpoint at step 3, and the resumed run's losses and final
  parameters equal the uninterrupted run's exactly (dropout on)."""
  straight = _run([tmp_path / "a", 6, 0, signame, CORPUS, VOCAB])
  assert straight.returncode == 0, straight.stderr[-3000:]
  stopped = _run([tmp_path / "b", 6, 3, signame, CORPUS, VOCAB])
  assert stopped.returncode == 0, stopped.stderr[-3000:]
  losses_b1, result_b1 = _parse(stopped.stdout)
  assert sorted(losses_b1) == [1, 2, 3]
  assert result_b1["stopped_by"] == signame and result_b1["last_checkpoint"] == 3
  assert f"stopped by {signame} after step 3 of 6" in stopped.stderr
  assert "Traceback" not in stopped.stderr
  assert sorted(int(p.name) for p in (tmp_path / "b" / "checkpoints").iterdir()
                if p.name.isdigit()) == [3]
  resumed = _run([tmp_path / "b", 6, 0, signame, CORPUS, VOCAB])
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  losses_a, result_a = _parse(straight.stdout)
  losses_b2, result_b2 = _parse(resumed.stdout)
  assert sorted(losses_b2) == [4, 5, 6]
  assert [losses_b2[s] for s in (4, 5, 6)] == [losses_a[s] for s in (4, 5, 6)]
  assert result_b2["embedding_bytes"] == result_a["embedding_bytes"]
  # metrics.jsonl: each step once.
  rows = [json.loads(l) for l in (tmp_path / "b" / "metrics.jsonl").read_text().splitlines()]
  steps = [r["step"] for r in rows if "split" not in r]
  assert steps == sorted(set(steps)) and steps[-1] == 6


@needs_data
@pytest.mark.slow
def test_cli_train_exits_zero_on_sigterm_with_a_line_saying_where(tmp_path):
  """The `train` command as a pod runs it: SIGTERM from outside while it trains."""
  model_dir = tmp_path / "run"
  args = [sys.executable, "-m", "arch_objective.cli", "train",
          "--gin_file=models/causal_decoder.gin", "--gin_file=sizes/tiny.gin",
          "--gin_file=objectives/full_lm.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{model_dir}'", "--gin.TRAIN_STEPS=100000", "--gin.BATCH_SIZE=2",
          "--gin.LENGTH=32", f"--gin.CORPUS='{CORPUS}'", f"--gin.VOCABULARY='{VOCAB}'",
          "--gin.MIXTURE_OR_TASK_NAME='local_full_lm'", "--gin.ACTIVATION_DTYPE='float32'",
          "--gin.EVAL_PERIOD=0", "--gin.train.log_every=1"]
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3")
  proc = subprocess.Popen(args, env=env, cwd=str(ROOT), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 240
  metrics = model_dir / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and len(
      metrics.read_text().splitlines()) >= 2):
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  stdout, stderr = proc.communicate(timeout=120)
  assert proc.returncode == 0, stderr[-3000:]
  out = json.loads(stdout.strip().splitlines()[-1])
  assert out["stopped_by"] == "SIGTERM" and out["last_checkpoint"] == out["step"] >= 2
  assert f"stopped by SIGTERM after step {out['step']} of 100000" in stderr
  assert (model_dir / "checkpoints" / str(out["step"])).is_dir()
  assert not (model_dir / run_lock.LOCK_FILE).exists()


# ---------------------------------------------------------------------------
# One writer per MODEL_DIR
# ---------------------------------------------------------------------------
def test_lock_refuses_a_live_holder_and_takes_over_a_dead_one(tmp_path):
  first = run_lock.RunLock(str(tmp_path))
  first.acquire()
  holder = json.loads((tmp_path / run_lock.LOCK_FILE).read_text())
  assert holder["pid"] == os.getpid() and holder["host"] == socket.gethostname()
  # Another live process on this host holds it (pid 1 always exists).
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": 1, "started": time.time(),
       "heartbeat": time.time()}))
  with pytest.raises(run_lock.RunLockError, match=r"in use by host .* pid 1 \(since"):
    run_lock.RunLock(str(tmp_path)).acquire()
  # A dead process of this host: taken over, naming it.
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True).stdout.strip()
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(
      {"host": socket.gethostname(), "pid": int(dead), "started": 0, "heartbeat": 0}))
  said = []
  lock = run_lock.RunLock(str(tmp_path), log=said.append)
  lock.acquire()
  assert said and f"pid {dead}" in said[0] and "no longer exists" in said[0]
  assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == os.getpid()
  lock.release()
  assert not (tmp_path / run_lock.LOCK_FILE).exists()
  # Another host: live while its heartbeat is fresh, stale after `stale_after`.
  other = {"host": "other-host-7", "pid": 4242, "started": time.time()}
  (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(dict(other, heartbeat=time.time())))
  with pytest.raises(run_lock.RunLockError, match="other-host-7 pid 4242"):
    run_lock.RunLock(str(tmp_path), stale_after=60).acquire()
  (tmp_path / run_lock.LOCK_FILE).write_text(
      json.dumps(dict(other, heartbeat=time.time() - 120)))
  said.clear()
  run_lock.RunLock(str(tmp_path), stale_after=60, log=said.append).acquire()
  assert "heartbeat is 120 s old" in said[0]


@needs_data
@pytest.mark.slow
def test_a_second_train_on_the_same_model_dir_is_refused_with_one_line(tmp_path):
  """A second `train` process on a MODEL_DIR in use exits 2 with one line naming the
  holder; the first run's checkpoints and metrics are untouched."""
  holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
  try:
    (tmp_path / run_lock.LOCK_FILE).write_text(json.dumps(
        {"host": socket.gethostname(), "pid": holder.pid, "started": time.time(),
         "heartbeat": time.time()}))
    from arch_objective import cli
    env_args = ["train", "--gin_file=models/causal_decoder.gin", "--gin_file=sizes/tiny.gin",
                "--gin_file=objectives/full_lm.gin", "--gin_file=runs/pretrain.gin",
                f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=1", "--gin.BATCH_SIZE=2",
                "--gin.LENGTH=32", f"--gin.CORPUS='{CORPUS}'", f"--gin.VOCABULARY='{VOCAB}'",
                "--gin.MIXTURE_OR_TASK_NAME='local_full_lm'", "--gin.EVAL_PERIOD=0"]
    proc = subprocess.run([sys.executable, "-m", "arch_objective.cli", *env_args],
                          env=dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3"),
                          capture_output=True, text=True, timeout=300, cwd=str(ROOT))
    assert proc.returncode == 2
    lines = [l for l in proc.stderr.splitlines() if l.startswith("arch-objective train:")]
    assert len(lines) == 1 and f"pid {holder.pid}" in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "checkpoints").exists() and not (tmp_path / "metrics.jsonl").exists()
    assert json.loads((tmp_path / run_lock.LOCK_FILE).read_text())["pid"] == holder.pid
  finally:
    holder.kill()
    holder.wait()


# ---------------------------------------------------------------------------
# Non-finite states and unreadable checkpoints
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.slow
def test_a_diverging_run_saves_only_finite_checkpoints(tmp_path):
  """Save every step; the learning rate turns NaN at step 3, so the parameters after
  step 3 are NaN while step 3's loss (computed before the update) is finite."""
  schedule = lambda step: jax.numpy.where(step >= 2, jax.numpy.nan, 0.01).astype("float32")
  with pytest.raises(train.NonFiniteLossError,
                     match="parameters are not finite after step 3.*last good checkpoint is "
                           "step 2"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(), train_steps=6,
                save_every=1, progress=False, learning_rate_schedule=schedule)
  saved = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit())
  assert saved == [1, 2]
  for step in saved:
    params, _, _ = checkpoints.load_params(str(tmp_path / "checkpoints" / str(step)))
    assert all(np.isfinite(x).all() for x in jax.tree_util.tree_leaves(params))
  # The directory resumes from the last finite checkpoint (and diverges again there).
  with pytest.raises(train.NonFiniteLossError, match="after step 3"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(), train_steps=6,
                save_every=1, progress=False, learning_rate_schedule=schedule)


@needs_data
@pytest.mark.slow
def test_an_unreadable_latest_checkpoint_falls_back_to_the_one_before(tmp_path, capsys):
  kwargs = dict(model=tiny(), dataset=dataset(), save_every=2, progress=False,
                learning_rate_schedule=optimizers.constant(0.01))
  straight = train.train(model_dir=str(tmp_path / "a"), train_steps=6, **kwargs)
  train.train(model_dir=str(tmp_path / "b"), train_steps=4, **kwargs)
  # Truncate every array file of step 4 (a disk that filled up mid-copy, a bad transfer).
  state_dir = tmp_path / "b" / "checkpoints" / "4" / "state"
  data_files = [p for p in state_dir.rglob("*") if p.is_file() and p.parent.name == "d"]
  assert data_files, sorted(str(p) for p in state_dir.rglob("*"))
  for p in data_files:
    p.write_bytes(p.read_bytes()[:16])
  logs.show_on_stderr()
  capsys.readouterr()
  result = train.train(model_dir=str(tmp_path / "b"), train_steps=6, **kwargs)
  err = capsys.readouterr().err
  assert "warning: checkpoint" in err and "/4 cannot be read" in err and "4.unreadable" in err
  assert [h["step"] for h in result.history] == [3, 4, 5, 6]
  assert (tmp_path / "b" / "checkpoints" / "4.unreadable").is_dir()
  np.testing.assert_array_equal(
      np.asarray(result.state.params["decoder"]["token_embedder"]["embedding"]),
      np.asarray(straight.state.params["decoder"]["token_embedder"]["embedding"]))


@needs_data
@pytest.mark.slow
def test_a_refused_resume_reads_no_array(tmp_path, monkeypatch):
  train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(), train_steps=1,
              progress=False)
  read = []
  original = checkpoints.ocp.args.StandardRestore
  monkeypatch.setattr(checkpoints.ocp.args, "StandardRestore",
                      lambda *a, **k: (read.append(1), original(*a, **k))[1])
  with pytest.raises(checkpoints.CheckpointError, match=r"batch_size: 4 -> 8"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(batch_size=8),
                train_steps=2, progress=False)
  assert read == []      # refused on the meta item, before any array is restored
  assert not list((tmp_path / "checkpoints").glob("*.unreadable"))


# ---------------------------------------------------------------------------
# Resume checks
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.slow
def test_resume_with_another_run_is_refused_naming_the_field(tmp_path):
  train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(), train_steps=1,
              progress=False)
  with pytest.raises(checkpoints.CheckpointError, match=r"batch_size: 4 -> 8"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(batch_size=8),
                train_steps=2, progress=False)
  with pytest.raises(checkpoints.CheckpointError, match=r"lengths: .*32"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(length=32),
                train_steps=2, progress=False)
  with pytest.raises(checkpoints.CheckpointError, match=r"seed: .*'data': 0.*'data': 3"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(seed=3),
                train_steps=2, progress=False)
  # Another vocabulary file of the same size: its hash differs.
  from sentencepiece import sentencepiece_model_pb2
  proto = sentencepiece_model_pb2.ModelProto()
  proto.ParseFromString(VOCAB.read_bytes())
  proto.pieces[100].score -= 1.0       # same 32000 pieces, another model
  other_vocab = tmp_path.parent / f"{tmp_path.name}_vocab.model"
  other_vocab.write_bytes(proto.SerializeToString())
  with pytest.raises(checkpoints.CheckpointError, match="vocabulary_sha256"):
    train.train(model_dir=str(tmp_path), model=tiny(),
                dataset=dataset(vocabulary=str(other_vocab)), train_steps=2, progress=False)
  with pytest.raises(ValueError, match="unknown field.*'batchsize'"):
    train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(batch_size=8),
                train_steps=2, progress=False, allow_resume_changes=["batchsize"])
  # Accepted when asked for explicitly.
  result = train.train(model_dir=str(tmp_path), model=tiny(), dataset=dataset(batch_size=8),
                       train_steps=2, progress=False, allow_resume_changes=["batch_size"])
  assert [h["step"] for h in result.history] == [2]
  meta = json.loads((tmp_path / "checkpoints" / "2" / "meta" / "metadata").read_text())
  assert meta["identity"]["batch_size"] == 8


@needs_data
@pytest.mark.slow
def test_a_resume_with_another_config_keeps_the_first_config_gin(tmp_path):
  from arch_objective import cli
  common = ["train", "--gin_file=models/causal_decoder.gin", "--gin_file=sizes/tiny.gin",
            "--gin_file=objectives/full_lm.gin", "--gin_file=runs/pretrain.gin",
            f"--gin.MODEL_DIR='{tmp_path}'", "--gin.BATCH_SIZE=2", "--gin.LENGTH=32",
            f"--gin.CORPUS='{CORPUS}'", f"--gin.VOCABULARY='{VOCAB}'",
            "--gin.MIXTURE_OR_TASK_NAME='local_full_lm'", "--gin.EVAL_PERIOD=0",
            "--gin.ACTIVATION_DTYPE='float32'"]
  assert cli.main(common + ["--gin.TRAIN_STEPS=1"]) == 0
  first = (tmp_path / "config.gin").read_text()
  assert cli.main(common + ["--gin.TRAIN_STEPS=2"]) == 0
  assert (tmp_path / "config.gin").read_text() == first and "TRAIN_STEPS = 1" in first
  assert "TRAIN_STEPS = 2" in (tmp_path / "config-1.gin").read_text()


# ---------------------------------------------------------------------------
# One-line errors at the command line
# ---------------------------------------------------------------------------
@pytest.mark.parametrize("binding,expected", [
    ("--gin.LENGTH=12a8", "gin binding 'LENGTH=12a8': the value is not a Python literal"),
    ("--gin.MODEL_DIR=runs/x", "--gin.MODEL_DIR=\"'runs/x'\""),
    ("--gin.TRAIN_STEPS='ten'", "train_steps (TRAIN_STEPS) must be an integer, found 'ten'"),
    ("--gin.BATCH_SIZE=2.5", "DatasetConfig.batch_size must be a positive integer, found 2.5"),
])
def test_gin_value_errors_are_one_line(tmp_path, capsys, binding, expected):
  from arch_objective import cli
  args = ["train", "--gin_file=models/causal_decoder.gin", "--gin_file=sizes/tiny.gin",
          "--gin_file=objectives/full_lm.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=1",
          "--gin.MIXTURE_OR_TASK_NAME='local_full_lm'", f"--gin.CORPUS='{tmp_path}/c.txt'"]
  name = binding.split("=")[0]
  args = [a for a in args if a.split("=")[0] != name] + [binding]
  capsys.readouterr()
  assert cli.main(args) == 2
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and expected in err, err


@needs_data
@pytest.mark.slow
def test_non_finite_loss_at_the_cli_is_one_line(tmp_path, capsys):
  from arch_objective import cli
  args = ["train", "--gin_file=models/causal_decoder.gin", "--gin_file=sizes/tiny.gin",
          "--gin_file=objectives/full_lm.gin", "--gin_file=runs/pretrain.gin",
          f"--gin.MODEL_DIR='{tmp_path}'", "--gin.TRAIN_STEPS=3", "--gin.BATCH_SIZE=2",
          "--gin.LENGTH=32", f"--gin.CORPUS='{CORPUS}'", f"--gin.VOCABULARY='{VOCAB}'",
          "--gin.MIXTURE_OR_TASK_NAME='local_full_lm'", "--gin.EVAL_PERIOD=0",
          "--gin.ACTIVATION_DTYPE='float32'",
          "--gin.learning_rate_schedule.base_learning_rate=1e30"]
  capsys.readouterr()
  assert cli.main(args) == 2
  err = capsys.readouterr().err
  lines = [l for l in err.splitlines() if l.startswith("arch-objective")]
  assert len(lines) == 1 and ("not finite" in lines[0] or "the loss is" in lines[0]), err
  assert "Traceback" not in err


MULTIHOST_SIGNAL_SCRIPT = """
import json, os, signal, sys
from arch_objective.training import partitioning
partitioning.initialize_distributed()
import jax
from arch_objective import build_model, logs
from arch_objective.training import data, optimizers, sources, train
def hook(step, summary):
  if step == 2 and jax.process_index() == 1:     # only host 1 is preempted
    os.kill(os.getpid(), signal.SIGTERM)
ds = data.DatasetConfig(task="local_full_lm", batch_size=4, length=32,
                        source=sources.LocalCorpus(sys.argv[1]), vocabulary=sys.argv[2])
model = build_model("causal_decoder", "tiny", dtype="float32")
r = train.train(model_dir=sys.argv[3], model=model, dataset=ds, train_steps=50,
                save_every=100, progress=False, hooks=[hook],
                learning_rate_schedule=optimizers.constant(0.01))
print("RESULT" + json.dumps({"process": jax.process_index(), "stopped_by": r.stopped_by,
                             "steps": [h["step"] for h in r.history],
                             "last_checkpoint": r.last_checkpoint}))
"""


@needs_data
@pytest.mark.slow
def test_a_signal_on_one_host_stops_every_host_at_the_same_step(tmp_path):
  """Two processes on 127.0.0.1; SIGTERM reaches host 1 only, during step 2. Both hosts
  stop after step 2 and save it together (a host left running would hang in step 3's
  collectives)."""
  outs = run_processes(MULTIHOST_SIGNAL_SCRIPT, [CORPUS, VOCAB, tmp_path])
  by_process = {o["process"]: o for o in outs}
  assert by_process[0]["steps"] == by_process[1]["steps"] == [1, 2]
  assert by_process[1]["stopped_by"] == "SIGTERM"
  assert by_process[0]["stopped_by"] == "a signal on another host"
  assert by_process[0]["last_checkpoint"] == by_process[1]["last_checkpoint"] == 2
  assert (tmp_path / "checkpoints" / "2").is_dir()
  assert not (tmp_path / run_lock.LOCK_FILE).exists()


@pytest.mark.parametrize("wrapped", [False, True])
def test_a_full_disk_is_one_line_even_when_orbax_wraps_it(monkeypatch, capsys, tmp_path,
                                                          wrapped):
  """orbax raises the writer thread's OSError(ENOSPC) wrapped in its own error; the
  command names the full device in one line and exits 2."""
  import errno
  from arch_objective import cli
  from arch_objective.training import gin_utils

  def parse(*args, **kwargs):
    full = OSError(errno.ENOSPC, "No space left on device", str(tmp_path / "checkpoints"))
    if not wrapped:
      raise full
    try:
      raise full
    except OSError as e:
      raise RuntimeError("a checkpoint save failed") from e

  monkeypatch.setattr(gin_utils, "parse", parse)
  capsys.readouterr()
  assert cli.main(["train", "--gin_file=runs/pretrain.gin"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "no space left on the device writing" in err[0]
  assert str(tmp_path / "checkpoints") in err[0]


@needs_data
@pytest.mark.slow
def test_a_checkpoint_of_another_process_count_resumes_by_replay(tmp_path, capsys):
  """The iterator states are per process (`process_<i>-of-<n>.json`); a run restarted on
  another number of hosts finds none of its own and replays the data position by count
  (here one host both times, so the rows, and the parameters, are the same)."""
  kwargs = dict(model=tiny(), dataset=dataset(), save_every=2, progress=False,
                learning_rate_schedule=optimizers.constant(0.01))
  straight = train.train(model_dir=str(tmp_path / "a"), train_steps=4, **kwargs)
  train.train(model_dir=str(tmp_path / "b"), train_steps=2, **kwargs)
  states = tmp_path / "b" / "checkpoints" / "2" / "data_state"
  (states / "process_0-of-1.json").rename(states / "process_0-of-2.json")
  logs.show_on_stderr()
  capsys.readouterr()
  resumed = train.train(model_dir=str(tmp_path / "b"), train_steps=4, **kwargs)
  assert "resumed from step 2" in capsys.readouterr().err
  np.testing.assert_array_equal(
      np.asarray(resumed.state.params["decoder"]["token_embedder"]["embedding"]),
      np.asarray(straight.state.params["decoder"]["token_embedder"]["embedding"]))
