"""A one-minute CPU smoke run: train a tiny model of each architecture and print losses.

The data is an embedded, seeded toy corpus read as UTF-8 bytes (ids 3..258; pad 0,
EOS 1), so nothing is downloaded. Each architecture reads it with its natural
objective: CD full LM, ND prefix LM (bidirectional over a random prefix), ED prefix
LM (prefix to the encoder, continuation to the decoder).
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import jax
import jax.numpy as jnp
import numpy as np
import optax

from arch_objective import models

BYTE_OFFSET = 3
VOCAB_SIZE = 384  # 259 byte ids, rounded up to a multiple of 128

_SUBJECTS = ["the red fox", "a small robot", "the old sailor", "my neighbour", "the blue whale",
             "a curious child", "the tall tree", "our teacher"]
_VERBS = ["sees", "follows", "paints", "remembers", "builds", "finds", "carries", "admires"]
_OBJECTS = ["a bright lantern", "the quiet river", "an empty boat", "the morning train",
            "a wooden bridge", "the last letter", "a golden key", "the winter garden"]
_ENDINGS = ["at dawn.", "after the storm.", "in the old town.", "before dinner.",
            "without a word.", "every summer."]


def toy_corpus(num_sentences: int = 4000, seed: int = 0) -> str:
  """Seeded sentences with a little structure for a model to learn."""
  rng = np.random.default_rng(seed)
  picks = [rng.integers(len(p), size=num_sentences)
           for p in (_SUBJECTS, _VERBS, _OBJECTS, _ENDINGS)]
  return " ".join(f"{_SUBJECTS[s]} {_VERBS[v]} {_OBJECTS[o]} {_ENDINGS[e]}"
                  for s, v, o, e in zip(*picks))


def encode_bytes(text: str) -> np.ndarray:
  return np.frombuffer(text.encode("utf-8"), np.uint8).astype(np.int32) + BYTE_OFFSET


def batches(arch: str, tokens: np.ndarray, batch_size: int, length: int,
            seed: int = 0) -> Iterator[dict[str, np.ndarray]]:
  """Endless batches of the architecture's objective over random windows."""
  rng = np.random.default_rng(seed)
  while True:
    starts = rng.integers(0, len(tokens) - 2 * length, size=batch_size)
    rows = np.stack([tokens[s:s + 2 * length] for s in starts])           # [b, 2l]
    if arch == models.ENCODER_DECODER:
      targets = rows[:, length:2 * length]
      yield {"encoder_input_tokens": rows[:, :length], "decoder_target_tokens": targets,
             "decoder_input_tokens": np.pad(targets[:, :-1], ((0, 0), (1, 0))),
             "decoder_loss_weights": np.ones_like(targets)}
      continue
    targets = rows[:, :length]
    inputs = np.pad(targets[:, :-1], ((0, 0), (1, 0)))
    positions = np.arange(length)[None, :]
    if arch == models.NON_CAUSAL_DECODER:
      split = rng.integers(1, length, size=(batch_size, 1))
      weights, dca = positions >= split, positions <= split
    else:
      weights, dca = np.ones_like(targets, bool), np.zeros_like(targets, bool)
    yield {"decoder_input_tokens": inputs, "decoder_target_tokens": targets,
           "decoder_loss_weights": weights.astype(np.int32),
           "decoder_causal_attention": dca.astype(np.int32)}


def train(arch: str, steps: int = 60, batch_size: int = 8, length: int = 64,
          log_every: int = 10, seed: int = 0, log: Callable[[str], None] = print) -> list[float]:
  """Train a tiny float32 model; returns the per-token loss of every step."""
  model = models.build_model(arch, "tiny", vocab_size=VOCAB_SIZE, dtype="float32",
                             loss_normalizing_factor="per_token")
  data = batches(arch, encode_bytes(toy_corpus(seed=seed)), batch_size, length, seed)
  first = next(data)
  shapes = {k: v.shape for k, v in first.items()}
  params = model.get_initial_variables(jax.random.PRNGKey(seed), shapes)["params"]
  optimizer = optax.adafactor(learning_rate=0.01)
  opt_state = optimizer.init(params)

  @jax.jit
  def step(params, opt_state, batch):
    (loss, metrics), grads = jax.value_and_grad(model.loss_fn, has_aux=True)(params, batch, None)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, metrics

  history, start, batch = [], time.time(), first
  for i in range(1, steps + 1):
    params, opt_state, metrics = step(params, opt_state, batch)
    history.append(float(metrics["loss"]))
    if i % log_every == 0 or i == 1:
      log(f"{models.SHORT_NAMES[arch]} step {i:4d}/{steps}  loss {history[-1]:.3f}  "
          f"accuracy {float(metrics['accuracy']):.3f}  ({time.time() - start:.1f}s)")
    batch = next(data)
  return history


def main(steps: int = 200) -> dict[str, list[float]]:
  results = {}
  for arch in models.ARCHITECTURES:
    print(f"== {arch}: tiny model, {steps} steps on the embedded toy corpus")
    results[arch] = train(arch, steps=steps)
  print("\nfirst -> last loss (per token):")
  for arch, history in results.items():
    print(f"  {models.SHORT_NAMES[arch]}: {history[0]:.3f} -> {history[-1]:.3f}")
  return results
