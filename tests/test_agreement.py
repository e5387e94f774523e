"""Cohen's kappa of a model's answers against the gold answers."""
import numpy as np
import pytest

from arch_objective.evaluation import agreement


def _independent_kappa(predicted, gold, k):
  """Kappa from the confusion matrix of the scored pairs."""
  confusion = np.zeros((k, k))
  for p, g in zip(predicted, gold):
    confusion[p, g] += 1
  confusion /= confusion.sum()
  chance = confusion.sum(1) @ confusion.sum(0)
  return (np.trace(confusion) - chance) / (1 - chance)


def test_kappa_on_literal_answers():
  # p_o = 3/4; answers 1/2, 1/2; gold 1/4, 3/4; p_e = 1/8 + 3/8 = 1/2; kappa = 1/2.
  assert agreement.kappa([0, 0, 1, 1], [0, 1, 1, 1], 2) == pytest.approx(0.5)
  assert agreement.kappa([2, 0, 1], [2, 0, 1], 3) == pytest.approx(1.0)
  # Swapped labels: worse than independent answers.
  assert agreement.kappa([1, 0, 1, 0], [0, 1, 0, 1], 2) == pytest.approx(-1.0)
  # One answer whatever the input carries no information, however often it is right.
  assert agreement.kappa([1, 1, 1, 1], [1, 1, 0, 1], 2) == 0.0
  assert agreement.kappa([1, 1, 1], [1, 1, 1], 2) == 0.0
  # Unscored examples (None, on either side) are left out.
  assert agreement.kappa([0, None, 1, 1], [0, 0, 1, None], 2) == pytest.approx(1.0)


def test_kappa_matches_the_confusion_matrix_computation():
  rng = np.random.default_rng(3)
  for k in (2, 3, 5):
    gold = rng.integers(0, k, 400)
    predicted = np.where(rng.random(400) < 0.3, gold, rng.integers(0, k, 400))
    assert agreement.kappa(predicted.tolist(), gold.tolist(), k) == pytest.approx(
        _independent_kappa(predicted, gold, k), abs=1e-12)


def test_family_kappa_is_the_median_over_prompts_with_an_interval():
  rng = np.random.default_rng(0)
  gold = rng.integers(0, 3, 600)
  informed = np.where(rng.random(600) < 0.5, gold, rng.integers(0, 3, 600))
  constant = np.zeros(600, np.int64)
  independent = rng.integers(0, 3, 600)
  prompts = {"a": informed.tolist(), "b": constant.tolist(), "c": informed.tolist()}
  result = agreement.family_kappa(prompts, gold.tolist(), 3, resamples=300, seed=1)
  expected = _independent_kappa(informed, gold, 3)
  assert result["kappa"] == pytest.approx(expected)
  low, high = result["ci"]
  assert low < expected < high and high - low < 0.2
  # A constant answer: 0 under every resampling.
  assert agreement.family_kappa({"a": constant.tolist()}, gold.tolist(), 3,
                                resamples=50)["ci"] == [0.0, 0.0]
  # Answers independent of the gold ones: kappa within 0.1 of 0 for 600 examples (its
  # standard error is about 0.03), and the interval covers 0.
  result = agreement.family_kappa({"a": independent.tolist()}, gold.tolist(), 3,
                                  resamples=300)
  assert abs(result["kappa"]) < 0.1 and result["ci"][0] < 0 < result["ci"][1]
  # The interval is seeded: the same seed draws the same examples, another seed others.
  again = agreement.family_kappa(prompts, gold.tolist(), 3, resamples=300, seed=1)
  other = agreement.family_kappa(prompts, gold.tolist(), 3, resamples=300, seed=2)
  assert again["ci"] == [low, high] and other["ci"] != [low, high]
  assert other["kappa"] == again["kappa"]


def test_answers_and_gold_of_different_lengths_are_named():
  with pytest.raises(ValueError, match="prompt b: 2 answers against 3 gold answers"):
    agreement.family_kappa({"a": [0, 1, 1], "b": [0, 1]}, [0, 1, 1], 2)
  with pytest.raises(ValueError, match="2 answers against 3 gold answers"):
    agreement.kappa([0, 1], [0, 1, 1], 2)
