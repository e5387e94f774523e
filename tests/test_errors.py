"""The project's error classes and the one test of a count a user sets."""
import numpy as np
import pytest

from arch_objective import errors


@pytest.mark.parametrize("value, minimum, expected", [
    (1, 1, True), (0, 1, False), (0, 0, True), (-1, 0, False), (np.int64(3), 1, True),
    (True, 0, False), (np.bool_(True), 0, False), (1.0, 1, False), ("2", 1, False),
    (None, 1, False), (4, 4, True), (3, 4, False)])
def test_integer_at_least(value, minimum, expected):
  assert errors.integer_at_least(value, minimum) is expected


def test_the_narrow_classes_are_user_errors_and_keep_their_builtin_kind():
  assert issubclass(errors.MissingFile, errors.UserError)
  assert issubclass(errors.MissingFile, FileNotFoundError)
  assert issubclass(errors.MissingDependency, errors.UserError)
  assert issubclass(errors.MissingDependency, ImportError)
  assert issubclass(errors.UserError, ValueError)
  with pytest.raises(FileNotFoundError, match="no such corpus"):
    raise errors.MissingFile("no such corpus")


def test_the_run_errors_are_user_errors():
  from arch_objective.training import checkpoints, run_lock, train
  for error in (checkpoints.CheckpointError, checkpoints.DiskFullError,
                checkpoints.IdentityError, run_lock.RunLockError, train.NonFiniteLossError):
    assert issubclass(error, errors.UserError), error
  assert issubclass(train.NonFiniteLossError, RuntimeError)
  assert issubclass(run_lock.RunLockError, RuntimeError)
