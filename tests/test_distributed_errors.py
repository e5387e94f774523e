"""Joining a multi-host job: bad settings are refused before anything starts, and a
coordinator nobody runs ends the process with one line of ours within the set time (JAX
alone aborts it after its own timeout, with no word of ours). Real processes on
127.0.0.1 only."""
import os
import socket
import subprocess
import sys
import time

import jax
import pytest

from arch_objective.training import partitioning

from helpers import ROOT

ENV = (partitioning.COORDINATOR_ENV, partitioning.NUM_PROCESSES_ENV,
       partitioning.PROCESS_ID_ENV, partitioning.TIMEOUT_ENV, *partitioning._CLUSTER_ENV)


@pytest.fixture
def no_cluster(monkeypatch):
  """No job settings in the environment, and a `jax.distributed.initialize` that records
  its arguments instead of joining anything."""
  for name in ENV:
    monkeypatch.delenv(name, raising=False)
  calls = []
  monkeypatch.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
  return calls


def free_port() -> int:
  """A port on 127.0.0.1 that nothing listens on (bound, then released)."""
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


# ----------------------------------------------------------------------------------------
# Settings checked before anything starts
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, env, message", [
    (dict(num_processes=2, process_id=5), {},
     r"--process_id must be below --num_processes=2 \(0 to 1\), found 5"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=2), {},
     r"--process_id must be below --num_processes=2 \(0 to 1\), found 2"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=-1), {},
     r"--process_id must be 0 or more, found -1"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=0, process_id=0), {},
     r"--num_processes must be at least 1, found 0"),
    ({}, {"ARCH_OBJECTIVE_NUM_PROCESSES": "2", "ARCH_OBJECTIVE_PROCESS_ID": "5"},
     r"ARCH_OBJECTIVE_PROCESS_ID must be below ARCH_OBJECTIVE_NUM_PROCESSES=2 .*found 5"),
    ({}, {"ARCH_OBJECTIVE_NUM_PROCESSES": "two"},
     r"ARCH_OBJECTIVE_NUM_PROCESSES must be an integer, found 'two'"),
    # a multi-process job with no coordinator: each process would run alone as process 0
    (dict(num_processes=2, process_id=1), {},
     r"--num_processes=2: a multi-process job needs a coordinator address, found none; "
     r"pass --coordinator_address HOST:PORT \(or set ARCH_OBJECTIVE_COORDINATOR\)"),
    (dict(num_processes=2, process_id=0), {}, r"needs a coordinator address"),
    (dict(process_id=1), {}, r"--process_id=1: a multi-process job needs a coordinator"),
    ({}, {"ARCH_OBJECTIVE_NUM_PROCESSES": "2", "ARCH_OBJECTIVE_PROCESS_ID": "1"},
     r"ARCH_OBJECTIVE_NUM_PROCESSES=2: a multi-process job needs a coordinator address"),
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2), {},
     r"--coordinator_address=127.0.0.1:1234 needs .* found --num_processes=2, "
     r"--process_id=None"),
    # malformed addresses
    (dict(coordinator_address="127.0.0.1", num_processes=2, process_id=1), {},
     r"--coordinator_address='127.0.0.1': expected HOST:PORT .*found no port"),
    (dict(coordinator_address="127.0.0.1:http", num_processes=2, process_id=1), {},
     r"--coordinator_address='127.0.0.1:http': expected HOST:PORT .*found port 'http', "
     r"not an integer"),
    (dict(coordinator_address=":1234", num_processes=2, process_id=1), {},
     r"found no host"),
    (dict(coordinator_address="127.0.0.1:70000", num_processes=2, process_id=1), {},
     r"found port 70000, outside 1-65535"),
    ({}, {"ARCH_OBJECTIVE_COORDINATOR": "localhost:x", "ARCH_OBJECTIVE_NUM_PROCESSES": "2",
          "ARCH_OBJECTIVE_PROCESS_ID": "0"},
     r"ARCH_OBJECTIVE_COORDINATOR='localhost:x': expected HOST:PORT"),
    # the wait
    (dict(coordinator_address="127.0.0.1:1234", num_processes=2, process_id=1,
          initialization_timeout=0), {},
     r"initialization_timeout must be a positive number of seconds, found 0"),
    ({}, {"ARCH_OBJECTIVE_COORDINATOR_TIMEOUT": "soon"},
     r"ARCH_OBJECTIVE_COORDINATOR_TIMEOUT must be a positive number of seconds, "
     r"found 'soon'"),
])
def test_bad_settings_are_refused_before_anything_starts(no_cluster, monkeypatch, kwargs,
                                                         env, message):
  for name, value in env.items():
    monkeypatch.setenv(name, value)
  with pytest.raises(ValueError, match=message) as error:
    partitioning.initialize_distributed(**kwargs)
  assert "\n" not in str(error.value)
  assert no_cluster == []


def test_a_single_process_joins_nothing(no_cluster):
  assert partitioning.initialize_distributed() is False
  assert partitioning.initialize_distributed(num_processes=1, process_id=0) is False
  assert no_cluster == []


def test_the_timeout_reaches_jax_and_process_0_does_not_wait(no_cluster, monkeypatch):
  assert partitioning.initialize_distributed("127.0.0.1:1234", 2, 0,
                                             initialization_timeout=7) is True
  assert no_cluster == [dict(coordinator_address="127.0.0.1:1234", num_processes=2,
                             process_id=0, initialization_timeout=7)]
  monkeypatch.setenv("ARCH_OBJECTIVE_COORDINATOR_TIMEOUT", "2.5")
  partitioning.initialize_distributed("127.0.0.1:1234", 2, 0)
  assert no_cluster[-1]["initialization_timeout"] == 3
  monkeypatch.delenv("ARCH_OBJECTIVE_COORDINATOR_TIMEOUT")
  partitioning.initialize_distributed("127.0.0.1:1234", 2, 0)
  assert no_cluster[-1]["initialization_timeout"] == partitioning.DEFAULT_TIMEOUT_S


def test_other_processes_join_once_the_coordinator_listens(no_cluster):
  with socket.socket() as server:
    server.bind(("127.0.0.1", 0))
    server.listen()
    address = f"127.0.0.1:{server.getsockname()[1]}"
    assert partitioning.initialize_distributed(address, 2, 1, initialization_timeout=5)
  assert no_cluster == [dict(coordinator_address=address, num_processes=2, process_id=1,
                             initialization_timeout=5)]


def test_an_unreachable_coordinator_is_named_within_the_timeout(no_cluster):
  address = f"127.0.0.1:{free_port()}"
  start = time.monotonic()
  with pytest.raises(ValueError, match=rf"cannot reach the coordinator at {address} within "
                                       rf"0.5 s \(.*\); start process 0 first"):
    partitioning.initialize_distributed(address, 2, 1, initialization_timeout=0.5)
  assert time.monotonic() - start < 5
  assert no_cluster == []


# ----------------------------------------------------------------------------------------
# The command line, in real processes
# ----------------------------------------------------------------------------------------
def run_train(tmp_path, args, env=None, timeout=120):
  """`arch-objective train ARGS` in a fresh process (the gin file is never reached)."""
  gin_file = tmp_path / "unused.gin"
  gin_file.write_text("UNUSED = 1\n")
  clean = {k: v for k, v in os.environ.items() if k not in ENV}
  env = dict(clean, PYTHONPATH=str(ROOT), TF_CPP_MIN_LOG_LEVEL="3", **(env or {}))
  start = time.monotonic()
  done = subprocess.run([sys.executable, "-m", "arch_objective.cli", "train", "--gin_file",
                         str(gin_file), *args], cwd=str(ROOT), env=env, text=True,
                        capture_output=True, timeout=timeout)
  return done, time.monotonic() - start


@pytest.mark.parametrize("by_env", [False, True], ids=["options", "environment"])
@pytest.mark.slow
def test_process_1_without_its_coordinator_fails_with_one_line_in_bounded_time(tmp_path,
                                                                              by_env):
  address = f"127.0.0.1:{free_port()}"
  settings = {"coordinator_address": address, "num_processes": "2", "process_id": "1"}
  if by_env:
    args, env = [], {"ARCH_OBJECTIVE_COORDINATOR": address,
                     "ARCH_OBJECTIVE_NUM_PROCESSES": "2", "ARCH_OBJECTIVE_PROCESS_ID": "1"}
  else:
    args, env = [f"--{k}={v}" for k, v in settings.items()], {}
  env["ARCH_OBJECTIVE_COORDINATOR_TIMEOUT"] = "2"
  done, seconds = run_train(tmp_path, args, env)
  assert done.returncode == 2, done.stderr[-3000:]
  errors = [line for line in done.stderr.splitlines() if line.startswith("arch-objective")]
  assert errors == [f"arch-objective train: cannot reach the coordinator at {address} "
                    f"within 2 s (Connection refused); start process 0 first (it runs the "
                    f"coordinator), or check the address (--coordinator_address / "
                    f"ARCH_OBJECTIVE_COORDINATOR) and that its port is open; "
                    f"ARCH_OBJECTIVE_COORDINATOR_TIMEOUT sets the wait."], done.stderr
  assert "Traceback" not in done.stderr and "Terminating process" not in done.stderr
  assert seconds < 60


@pytest.mark.slow
def test_a_process_id_past_the_job_is_one_line(tmp_path):
  done, _ = run_train(tmp_path, ["--coordinator_address", f"127.0.0.1:{free_port()}",
                                 "--num_processes", "2", "--process_id", "5"])
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      "arch-objective train: --process_id must be below --num_processes=2 (0 to 1), found 5; "
      "number the processes 0 to 1."]
