"""The trainer: the six pretraining pairs learn, sharding, exact resume, crashes, the
`train` and `evaluate` commands end to end, restoring across architectures."""
import json
import os
import signal
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from arch_objective import build_model
from arch_objective.training import checkpoints, optimizers, train

from helpers import CORPUS, ROOT, VOCAB, needs_data, run_processes
from helpers import local_dataset as dataset

PAIRS = [("causal_decoder", "local_full_lm"), ("causal_decoder", "local_span_corruption"),
         ("non_causal_decoder", "local_prefix_lm"), ("non_causal_decoder", "local_span_corruption"),
         ("encoder_decoder", "local_prefix_lm"), ("encoder_decoder", "local_span_corruption")]


def run_script(code: str, env_extra=None, timeout=300):
  env = dict(os.environ, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **(env_extra or {}))
  return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env,
                        capture_output=True, text=True, timeout=timeout, cwd=str(ROOT))


@needs_data
@pytest.mark.parametrize("arch,task", PAIRS)
@pytest.mark.slow
def test_each_paper_pair_trains_and_the_loss_falls(arch, task, tmp_path):
  model = build_model(arch, "tiny", dtype="float32")
  result = train.train(model_dir=str(tmp_path), model=model, dataset=dataset(task),
                       train_steps=12, save_every=100, log_every=6, progress=False,
                       learning_rate_schedule=optimizers.constant(0.01))
  losses = [h["loss_per_token"] for h in result.history]
  assert len(losses) == 12 and all(np.isfinite(losses))
  # Starting near log(32128) = 10.4 nats; 12 Adafactor steps learn the unigram statistics.
  assert np.mean(losses[-3:]) < np.mean(losses[:3]) - 0.3, losses
  rows = [json.loads(l) for l in (tmp_path / "metrics.jsonl").read_text().splitlines()]
  assert [r["step"] for r in rows] == [6, 12]
  assert all("loss" in r and "tokens_per_second" in r for r in rows)
  assert (tmp_path / "checkpoints" / "12").is_dir()


RESUME_SCRIPT = """
import json, os, signal, sys, time
import numpy as np
from arch_objective import build_model, logs
from arch_objective.training import data, optimizers, sources, train
logs.show_on_stderr()
model_dir, steps, kill_at = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def hook(step, summary):
  print(json.dumps({"step": step, "loss": summary["loss"]}), flush=True)
  if step == kill_at - 1:
    time.sleep(2.0)                       # let the async save of the previous checkpoint land
  if step == kill_at:
    os.kill(os.getpid(), signal.SIGKILL)
ds = data.DatasetConfig(task="local_span_corruption", batch_size=4, length=64,
                        source=sources.LocalCorpus(sys.argv[4]), vocabulary=sys.argv[5])
model = build_model("non_causal_decoder", "tiny", dtype="float32", dropout_rate=0.1)
result = train.train(model_dir=model_dir, model=model, dataset=ds, train_steps=steps,
                     save_every=int(sys.argv[6]), hooks=[hook], progress=False,
                     learning_rate_schedule=optimizers.constant(0.01))
np.save(os.path.join(model_dir, "final_embedding.npy"),
        np.asarray(result.state.params["decoder"]["token_embedder"]["embedding"]))
"""


def _losses(stdout):
  return {json.loads(l)["step"]: json.loads(l)["loss"] for l in stdout.splitlines()
          if l.startswith("{")}


@needs_data
@pytest.mark.slow
def test_resume_after_sigkill_matches_an_uninterrupted_run(tmp_path):
  """8 steps straight vs. 4 steps + checkpoint, SIGKILL at step 6, resume to 8. Dropout
  is on, so the per-step RNG must resume too."""
  args = lambda d, kill, save: [str(d), "8", str(kill), str(CORPUS), str(VOCAB), str(save)]
  straight = run_script(f"import sys; sys.argv = ['x'] + {args(tmp_path / 'a', 0, 4)!r}\n"
                        + RESUME_SCRIPT)
  assert straight.returncode == 0, straight.stderr[-3000:]
  killed = run_script(f"import sys; sys.argv = ['x'] + {args(tmp_path / 'b', 6, 4)!r}\n"
                      + RESUME_SCRIPT)
  assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
  assert sorted(_losses(killed.stdout)) == [1, 2, 3, 4, 5, 6]
  resumed = run_script(f"import sys; sys.argv = ['x'] + {args(tmp_path / 'b', 0, 4)!r}\n"
                       + RESUME_SCRIPT)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  a, b = _losses(straight.stdout), _losses(resumed.stdout)
  assert sorted(b) == [5, 6, 7, 8]
  np.testing.assert_allclose([b[s] for s in (5, 6, 7, 8)], [a[s] for s in (5, 6, 7, 8)],
                             rtol=1e-6)
  np.testing.assert_allclose(np.load(tmp_path / "b" / "final_embedding.npy"),
                             np.load(tmp_path / "a" / "final_embedding.npy"), rtol=1e-6,
                             atol=1e-7)


@needs_data
@pytest.mark.slow
def test_kill_during_checkpoint_save_restarts_from_the_previous_good_one(tmp_path):
  """Save every step; SIGKILL right after step 6's save is issued (async, unfinished)."""
  args = [str(tmp_path), "8", "6", str(CORPUS), str(VOCAB), "1"]
  killed = run_script(f"import sys; sys.argv = ['x'] + {args!r}\n" + RESUME_SCRIPT)
  assert killed.returncode == -signal.SIGKILL
  committed = sorted(int(p.name) for p in (tmp_path / "checkpoints").iterdir()
                     if p.name.isdigit())
  assert 5 in committed  # committed during the 2 s pause at step 5
  restart_step = max(committed)
  resumed = run_script(f"import sys; sys.argv = ['x'] + {[*args[:2], '0', *args[3:]]!r}\n"
                       + RESUME_SCRIPT)
  assert resumed.returncode == 0, resumed.stderr[-3000:]
  assert f"resumed from step {restart_step}" in resumed.stderr
  assert sorted(_losses(resumed.stdout)) == list(range(restart_step + 1, 9))


SHARDED_SCRIPT = """
import json, sys
import jax, numpy as np
from arch_objective import build_model
from arch_objective.training import data, optimizers, partitioning, sources, train
assert jax.device_count() == 8, jax.devices()
ds = data.DatasetConfig(task="local_prefix_lm", batch_size=8, length=64,
                        source=sources.LocalCorpus(sys.argv[1]), vocabulary=sys.argv[2])
out = {}
for name, (d, m, devices) in {"one": (1, 1, jax.devices()[:1]),
                             "mesh": (4, 2, jax.devices())}.items():
  model = build_model("encoder_decoder", "tiny", dtype="float32")
  r = train.train(model_dir=sys.argv[3] + name, model=model, dataset=ds, train_steps=3,
                  mesh_data=d, mesh_model=m, devices=devices, progress=False,
                  learning_rate_schedule=optimizers.constant(0.01))
  wi = r.state.params["decoder"]["layers_0"]["mlp"]["wi_0"]["kernel"]
  out[name] = {"losses": [h["loss"] for h in r.history], "wi": np.asarray(wi).tolist(),
               "spec": str(wi.sharding.spec)}
try:
  partitioning.Partitioner(partitioning.make_mesh(4, 2)).check_batch_size(6)
except ValueError as e:
  out["batch_error"] = str(e)
print("RESULT" + json.dumps(out))
"""


@needs_data
@pytest.mark.slow
def test_eight_device_mesh_matches_one_device(tmp_path):
  """data=4 x model=2 on 8 fake CPU devices vs one device: the same losses within 1e-5
  relative and the same weights within 1e-5 (float32, different reduction orders)."""
  proc = run_script(f"import sys; sys.argv = ['x', {str(CORPUS)!r}, {str(VOCAB)!r}, "
                    f"{str(tmp_path) + '/'!r}]\n" + SHARDED_SCRIPT,
                    env_extra={"XLA_FLAGS": "--xla_force_host_platform_device_count=8"})
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads(proc.stdout.split("RESULT", 1)[1])
  np.testing.assert_allclose(out["mesh"]["losses"], out["one"]["losses"], rtol=1e-5)
  np.testing.assert_allclose(out["mesh"]["wi"], out["one"]["wi"], rtol=1e-5, atol=1e-5)
  assert "model" in out["mesh"]["spec"]  # the MLP kernel really is split over `model`
  assert "batch size 6" in out["batch_error"] and "data-parallel size 4" in out["batch_error"]


DISTRIBUTED_SCRIPT = """
import json, sys
from arch_objective.training import partitioning
partitioning.initialize_distributed()
import jax
from arch_objective import build_model
from arch_objective.training import data, optimizers, sources, train
assert jax.process_count() == 2 and jax.device_count() == 4, (jax.process_count(), jax.devices())
ds = data.DatasetConfig(task="local_full_lm", batch_size=4, length=32,
                        source=sources.LocalCorpus(sys.argv[1]), vocabulary=sys.argv[2])
model = build_model("causal_decoder", "tiny", dtype="float32")
r = train.train(model_dir=sys.argv[3], model=model, dataset=ds, train_steps=2, progress=False,
                learning_rate_schedule=optimizers.constant(0.01))
print("RESULT" + json.dumps({"process": jax.process_index(),
                             "losses": [h["loss"] for h in r.history]}))
"""


@needs_data
@pytest.mark.slow
def test_two_processes_train_together_with_jax_distributed(tmp_path):
  outs = run_processes(DISTRIBUTED_SCRIPT, [CORPUS, VOCAB, tmp_path])
  assert sorted(o["process"] for o in outs) == [0, 1]
  assert outs[0]["losses"] == outs[1]["losses"]  # one global computation
  assert all(np.isfinite(outs[0]["losses"]))


# ---------------------------------------------------------------------------
# Bad input and failure handling
# ---------------------------------------------------------------------------
@needs_data
@pytest.mark.slow
def test_non_finite_loss_stops_naming_the_step_and_keeps_the_checkpoint(tmp_path):
  model = build_model("causal_decoder", "tiny", dtype="float32")
  poisoned = lambda step: np.float32(np.nan) * step  # step 0 updates with lr 0*nan = nan
  # Step 1's loss is finite but its update makes the parameters NaN: never saved.
  with pytest.raises(train.NonFiniteLossError,
                     match="not finite after step 1.*No checkpoint was saved"):
    train.train(model_dir=str(tmp_path), model=model, dataset=dataset(), train_steps=5,
                save_every=1, progress=False, learning_rate_schedule=poisoned)
  assert not any(p.name.isdigit() for p in (tmp_path / "checkpoints").iterdir())
  # Without a save at step 1, the NaN loss of step 2 stops the run, naming the step.
  with pytest.raises(train.NonFiniteLossError, match="the loss is nan at step 2"):
    train.train(model_dir=str(tmp_path / "b"), model=model, dataset=dataset(), train_steps=5,
                save_every=5, progress=False, learning_rate_schedule=poisoned)


@needs_data
@pytest.mark.slow
def test_incompatible_checkpoint_is_named(tmp_path):
  train.train(model_dir=str(tmp_path), model=build_model("causal_decoder", "tiny",
                                                         dtype="float32"),
              dataset=dataset(), train_steps=1, progress=False)
  bigger = build_model("causal_decoder", "tiny", dtype="float32", emb_dim=32)
  with pytest.raises(checkpoints.CheckpointError, match="has shape .* but the model expects"):
    train.train(model_dir=str(tmp_path), model=bigger, dataset=dataset(), train_steps=2,
                progress=False)


@needs_data
def test_unwritable_model_dir_and_small_vocab_are_rejected_before_work(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("x")
  model = build_model("causal_decoder", "tiny", dtype="float32")
  with pytest.raises(ValueError, match="MODEL_DIR .* cannot be written"):
    train.train(model_dir=str(blocker / "run"), model=model, dataset=dataset(), train_steps=1)
  small = build_model("causal_decoder", "tiny", dtype="float32", vocab_size=1000)
  with pytest.raises(ValueError, match="vocab_size 1000 is smaller than the vocabulary"):
    train.train(model_dir=str(tmp_path / "run"), model=small, dataset=dataset(), train_steps=1)


@needs_data
@pytest.mark.slow
def test_train_and_evaluate_commands_end_to_end(tmp_path):
  from arch_objective import cli
  common = ["--gin_file=models/encoder_decoder.gin", "--gin_file=sizes/tiny.gin",
            "--gin_file=objectives/span_corruption.gin",
            f"--gin.MODEL_DIR='{tmp_path}'", "--gin.BATCH_SIZE=2", "--gin.LENGTH=64",
            f"--gin.CORPUS='{CORPUS}'", f"--gin.VOCABULARY='{VOCAB}'",
            "--gin.MIXTURE_OR_TASK_NAME='local_span_corruption'"]
  assert cli.main(["train", "--gin_file=runs/pretrain.gin", *common, "--gin.TRAIN_STEPS=2",
                   "--gin.ACTIVATION_DTYPE='float32'"]) == 0
  operative = (tmp_path / "config.gin").read_text()
  assert "TRAIN_STEPS = 2" in operative and "build_model.arch = %ARCH" in operative
  assert cli.main(["evaluate", "--gin_file=runs/evaluate.gin", *common,
                   "--gin.EVAL_STEPS=1"]) == 0
  (result,) = (tmp_path / "eval").glob("*.json")
  metrics = json.loads(result.read_text())
  assert metrics["step"] == 2 and metrics["split"] == "validation"
  assert np.isfinite(metrics["loss"]) and metrics["num_tokens"] > 0


@needs_data
@pytest.mark.slow
def test_restore_checkpoint_continues_the_step_across_architectures(tmp_path, capsys):
  """A CD:FLM checkpoint continues as ND:MLM (the paper's NC-A recipe): the step counter
  and optimiser state carry on, the data starts afresh, the lineage records the source."""
  source = tmp_path / "cd_flm"
  train.train(model_dir=str(source), model=build_model("causal_decoder", "tiny", dtype="float32"),
              dataset=dataset("local_full_lm"), train_steps=2, progress=False)
  target = tmp_path / "nd_mlm"
  result = train.train(model_dir=str(target),
                       model=build_model("non_causal_decoder", "tiny", dtype="float32"),
                       dataset=dataset("local_span_corruption"), train_steps=4, progress=False,
                       restore_checkpoint=str(source / "checkpoints" / "2"),
                       restore_dtype="bfloat16")
  assert [h["step"] for h in result.history] == [3, 4]
  assert int(result.state.step) == 4
  emb = result.state.params["decoder"]["token_embedder"]["embedding"]
  assert emb.dtype == jax.numpy.bfloat16
  meta = json.loads((target / "checkpoints" / "4" / "meta" / "metadata").read_text())
  assert meta["arch"] == "non_causal_decoder"
  source_tokens = 2 * dataset().batch_size * dataset().length       # 2 steps of 4 x 64
  assert meta["lineage"] == [{"checkpoint": str(source / "checkpoints" / "2"), "step": 2,
                              "arch": "causal_decoder", "task": "local_full_lm",
                              "tokens_seen": source_tokens}]
  from arch_objective import cli
  capsys.readouterr()
  assert cli.main(["plan", "--model_dir", str(target)]) == 0
  plan = json.loads(capsys.readouterr().out)
  assert plan["arch"] == "non_causal_decoder" and plan["lineage"]["step"] == 4
  assert plan["lineage"]["sources"] == meta["lineage"]
  with pytest.raises(checkpoints.CheckpointError, match="no such checkpoint directory"):
    train.train(model_dir=str(tmp_path / "other"), model=build_model("causal_decoder", "tiny"),
                dataset=dataset(), train_steps=1, restore_checkpoint=str(tmp_path / "nope"))


@needs_data
@pytest.mark.slow
def test_restore_options_reset_step_optimizer_and_schedule(tmp_path):
  source = tmp_path / "src"
  model = build_model("causal_decoder", "tiny", dtype="float32")
  train.train(model_dir=str(source), model=model, dataset=dataset(), train_steps=3,
              progress=False)
  seen = {}
  for name, options in {"continue": {}, "reset": dict(reset_step=True, reset_optimizer=True,
                                                      reset_schedule=True)}.items():
    result = train.train(model_dir=str(tmp_path / name), model=model, dataset=dataset(),
                         train_steps=4, progress=False, restore_checkpoint=str(source),
                         learning_rate_schedule=lambda step: 0.01 / (1.0 + step), **options)
    seen[name] = result
  cont, reset = seen["continue"], seen["reset"]
  # Continue: the step goes 3 -> 4 and the schedule sees step 3; reset: steps 1..4 from 0.
  assert [h["step"] for h in cont.history] == [4]
  assert cont.history[0]["learning_rate"] == pytest.approx(0.01 / 4)
  assert [h["step"] for h in reset.history] == [1, 2, 3, 4]
  assert reset.history[0]["learning_rate"] == pytest.approx(0.01)
  counts = [int(x) for p, x in jax.tree_util.tree_flatten_with_path(reset.state.opt_state)[0]
            if "count" in jax.tree_util.keystr(p)]
  assert counts and all(c == 4 for c in counts)
