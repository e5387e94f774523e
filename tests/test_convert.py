"""Conversions: t5x checkpoints in and out, Hugging Face T5 and native exports, CD <-> ND."""
import dataclasses
import json
import os

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorstore as ts
from flax import traverse_util

from arch_objective import build_model, models
from arch_objective.convert import cli, hf, param_tree, t5x
from arch_objective.training import checkpoints, optimizers, trainer

from helpers import VOCAB as T5_VOCAB, needs_data, random_params

CD, ND, ED = models.CAUSAL_DECODER, models.NON_CAUSAL_DECODER, models.ENCODER_DECODER
VOCAB = 128


def tiny(arch):
  return build_model(arch, "tiny", dtype="float32", vocab_size=VOCAB)


@pytest.fixture(scope="module")
def params_of():
  """Random float32 parameters of each tiny architecture, as numpy trees."""
  cache = {}

  def get(arch):
    if arch not in cache:
      cache[arch] = random_params(tiny(arch), seed=len(cache) + 1)
    return cache[arch]
  return get


def flat(tree):
  return traverse_util.flatten_dict(tree, sep="/")


def assert_trees_equal(a, b, dtype=None):
  fa, fb = flat(a), flat(b)
  assert sorted(fa) == sorted(fb)
  for k in fa:
    x, y = np.asarray(fa[k]), np.asarray(fb[k])
    assert x.shape == y.shape, k
    if dtype is not None:
      assert y.dtype == dtype, (k, y.dtype)
    assert np.array_equal(x, y), k


# ---------------------------------------------------------------------------
# A t5x checkpoint written by hand: msgpack + TensorStore zarr, as t5x lays it out
# ---------------------------------------------------------------------------
def write_by_hand(directory, params, step, param_states=None, style="file"):
  """`directory/checkpoint_<step>/` with 1-D parameters inline in the msgpack and every
  other array a gzip zarr array (two chunks per axis where possible), its msgpack
  spec relative: `kvstore.path` (style 'file') or a top-level `path` under the
  placeholder bucket (style 'gcs', how checkpoints written to GCS read)."""
  ckpt = os.path.join(directory, f"checkpoint_{step}")
  os.makedirs(ckpt)
  state = {"target": params, "state": {"step": np.int32(step)}}
  if param_states is not None:
    state["state"]["param_states"] = param_states
  out = {}
  for name, value in traverse_util.flatten_dict(state, sep="/").items():
    value = np.asarray(value)
    if value.ndim < 2:
      out[name] = value
      continue
    dotted = name.replace("/", ".")
    metadata = {"shape": list(value.shape), "chunks": [max(1, s // 2) for s in value.shape],
                "dtype": value.dtype.str, "compressor": {"id": "gzip"}}
    store = ts.open({"driver": "zarr", "metadata": metadata,
                     "kvstore": {"driver": "file", "path": os.path.join(ckpt, dotted) + "/"}},
                    create=True).result()
    store.write(value).result()
    if style == "file":
      out[name] = {"driver": "zarr", "kvstore": {"driver": "file", "path": dotted},
                   "metadata": metadata}
    else:
      out[name] = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": t5x.DUMMY_BUCKET},
                   "path": dotted, "metadata": metadata}
  contents = {"version": 3, "optimizer": traverse_util.unflatten_dict(out, sep="/")}
  with open(os.path.join(ckpt, "checkpoint"), "wb") as f:
    f.write(flax.serialization.msgpack_serialize(contents))
  return ckpt


def adafactor_like_states(params):
  """t5x Adafactor-shaped param_states: v (full) and (1,) placeholders."""
  rng = np.random.default_rng(0)
  return {k: {"v": rng.random(np.shape(v)).astype(np.float32),
              "v_row": np.zeros((1,), np.float32), "v_col": np.zeros((1,), np.float32),
              "m": np.zeros((1,), np.float32)}
          for k, v in flat(params).items()}


# 'gcs' is how the released checkpoints (written to GCS) read once downloaded.
@pytest.mark.parametrize("arch,style", [(CD, "gcs"), (ND, "file"), (ED, "gcs")])
@pytest.mark.parametrize("with_optimizer", [False, True])
def test_reads_a_hand_written_t5x_checkpoint(tmp_path, params_of, arch, style, with_optimizer):
  params = params_of(arch)
  states = traverse_util.unflatten_dict(adafactor_like_states(params), sep="/")
  ckpt = write_by_hand(str(tmp_path), params, 131072, states, style)

  got = t5x.read_t5x_checkpoint(ckpt, with_optimizer=with_optimizer)
  assert got["step"] == 131072
  assert_trees_equal(params, got["params"], dtype=np.float32)
  if with_optimizer:
    assert int(got["optimizer"]["step"]) == 131072
    assert_trees_equal(states, got["optimizer"]["param_states"])
  else:
    assert got["optimizer"] is None
  # The parent directory reads its latest checkpoint; the msgpack file reads too.
  assert_trees_equal(params, t5x.read_t5x_checkpoint(str(tmp_path))["params"])
  assert_trees_equal(params, t5x.read_t5x_checkpoint(os.path.join(ckpt, "checkpoint"))["params"])

  cast = t5x.read_t5x_checkpoint(ckpt, dtype="bfloat16")["params"]
  expected = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  assert_trees_equal(expected, cast, dtype=jnp.bfloat16)

  loaded = t5x.to_model_params(got["params"], tiny(arch))
  assert_trees_equal(params, loaded)


def test_write_t5x_checkpoint_round_trips_and_is_laid_out_like_t5x(tmp_path, params_of):
  params = params_of(ED)
  states = {"param_states": traverse_util.unflatten_dict(adafactor_like_states(params), sep="/")}
  ckpt = t5x.write_t5x_checkpoint(params, str(tmp_path), 42, optimizer_state=states)
  assert ckpt == os.path.join(str(tmp_path), "checkpoint_42")
  assert sorted(os.listdir(tmp_path)) == ["checkpoint_42"]             # no temporary left
  got = t5x.read_t5x_checkpoint(str(tmp_path), with_optimizer=True)
  assert got["step"] == 42
  assert_trees_equal(params, got["params"], dtype=np.float32)
  assert_trees_equal(states["param_states"], got["optimizer"]["param_states"])

  # Read it as t5x does, without our reader: msgpack + relative zarr specs.
  with open(os.path.join(ckpt, "checkpoint"), "rb") as f:
    contents = flax.serialization.msgpack_restore(f.read())
  assert contents["version"] == 3 and int(contents["optimizer"]["state"]["step"]) == 42
  name = "target/encoder/layers_0/attention/query/kernel"
  spec = contents["optimizer"]
  for key in name.split("/"):
    spec = spec[key]
  assert spec["driver"] == "zarr" and spec["metadata"]["compressor"]["id"] == "gzip"
  assert spec["kvstore"] == {"driver": "file", "path": name.replace("/", ".")}
  zarr = ts.open({"driver": "zarr", "kvstore": {
      "driver": "file", "path": os.path.join(ckpt, spec["kvstore"]["path"]) + "/"}}).result()
  np.testing.assert_array_equal(zarr.read().result(), flat(params)[name[len("target/"):]])

  # Everything inline (no TensorStore) reads back the same.
  inline = t5x.write_t5x_checkpoint(params, str(tmp_path / "inline"), 7, use_tensorstore=False)
  assert os.listdir(inline) == ["checkpoint"]
  assert_trees_equal(params, t5x.read_t5x_checkpoint(inline)["params"])

  # bfloat16 is stored as zarr's 'bfloat16' and comes back bit for bit.
  bf16 = t5x.write_t5x_checkpoint(params, str(tmp_path / "bf16"), 9, dtype="bfloat16")
  expected = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)
  assert_trees_equal(expected, t5x.read_t5x_checkpoint(bf16)["params"], dtype=jnp.bfloat16)

  with pytest.raises(ValueError, match="already exists"):
    t5x.write_t5x_checkpoint(params, str(tmp_path), 42)


def test_relative_specs_resolve_against_local_and_gcs_directories():
  gcs_spec = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": t5x.DUMMY_BUCKET},
              "path": "target.decoder.decoder_norm.scale", "metadata": {"shape": [4]}}
  file_spec = {"driver": "zarr", "kvstore": {"driver": "file",
                                             "path": "target.decoder.decoder_norm.scale"}}
  name = "target.decoder.decoder_norm.scale/"
  for spec in (gcs_spec, file_spec):
    assert t5x.resolve_spec(spec, "gs://my-bucket/runs/checkpoint_5") == {
        "driver": "zarr",
        "kvstore": {"driver": "gcs", "bucket": "my-bucket", "path": "runs/checkpoint_5/" + name}}
    assert t5x.resolve_spec(spec, "/data/checkpoint_5") == {
        "driver": "zarr", "kvstore": {"driver": "file", "path": "/data/checkpoint_5/" + name}}
  with pytest.raises(ValueError, match="kvstore driver 'memory'"):
    t5x.resolve_spec({"driver": "zarr", "kvstore": {"driver": "memory"}}, "/data", "w")


def test_strict_names_what_differs_and_non_strict_reports_what_it_skipped(params_of):
  params = flat(params_of(CD))
  params.pop("decoder/decoder_norm/scale")
  params["decoder/layers_0/mlp/wi_2/kernel"] = np.zeros((64, 128), np.float32)
  params["decoder/layers_1/self_attention/query/kernel"] = np.zeros((64, 32), np.float32)
  tree = traverse_util.unflatten_dict(params, sep="/")

  with pytest.raises(ValueError) as e:
    t5x.to_model_params(tree, tiny(CD))
  message = str(e.value)
  assert "1 missing" in message and "decoder/decoder_norm/scale" in message
  assert "1 unexpected" in message and "decoder/layers_0/mlp/wi_2/kernel" in message
  assert ("decoder/layers_1/self_attention/query/kernel found (64, 32) expected (64, 64)"
          in message)

  subset, report = t5x.to_model_params(tree, tiny(CD), strict=False)
  assert report == {
      "missing": ["decoder/decoder_norm/scale"],
      "unexpected": ["decoder/layers_0/mlp/wi_2/kernel"],
      "mismatched": {"decoder/layers_1/self_attention/query/kernel":
                     {"found": [64, 32], "expected": [64, 64]}}}
  loaded = flat(subset)
  assert "decoder/layers_0/mlp/wi_2/kernel" not in loaded
  assert "decoder/layers_1/self_attention/query/kernel" not in loaded
  assert len(loaded) == len(params) - 2

  # An ED checkpoint is no decoder-only model: the message names the arch to pass.
  with pytest.raises(ValueError, match="--arch and --size"):
    t5x.to_model_params(params_of(ED), tiny(CD))


@pytest.mark.parametrize("version,found", [(2, "version 2"), (None, "no version")])
def test_an_unknown_version_is_rejected(tmp_path, version, found):
  ckpt = tmp_path / "checkpoint_1"
  ckpt.mkdir()
  contents = {"optimizer": {"target": {"w": np.zeros((2,), np.float32)}}}
  if version is not None:
    contents["version"] = version
  (ckpt / "checkpoint").write_bytes(flax.serialization.msgpack_serialize(contents))
  with pytest.raises(ValueError, match=rf"{found}.*supported: version 3"):
    t5x.read_t5x_checkpoint(str(ckpt))


def test_a_missing_checkpoint_says_what_to_pass(tmp_path):
  with pytest.raises(ValueError, match="checkpoint_<step> directory"):
    t5x.read_t5x_checkpoint(str(tmp_path))


# ---------------------------------------------------------------------------
# Hugging Face
# ---------------------------------------------------------------------------
def test_exported_encoder_decoder_gives_our_logits_in_transformers(tmp_path, params_of):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model, params = tiny(ED), params_of(ED)
  out = hf.export_hf(params, model.config, ED, str(tmp_path / "hf"),
                     meta={"vocab_size": 100})
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["feed_forward_proj"] == "gated-gelu" and config["dense_act_fn"] == "gelu_new"
  assert config["tie_word_embeddings"] is True and config["d_kv"] == 16
  assert sorted(os.listdir(out)) == ["config.json", "generation_config.json", "model.safetensors"]

  # Lengths past the exact relative-position buckets (8 bidirectional, 16 causal).
  rng = np.random.default_rng(0)
  enc = rng.integers(1, VOCAB, size=(2, 37)).astype(np.int32)
  targets = rng.integers(1, VOCAB, size=(2, 29)).astype(np.int32)
  dec = np.concatenate([np.zeros((2, 1), np.int32), targets[:, :-1]], axis=1)
  dec[:, 0] = rng.integers(1, VOCAB, size=2)       # non-zero: no padding anywhere
  ours = np.asarray(jax.jit(model.compute_logits)(params, {
      "encoder_input_tokens": enc, "decoder_input_tokens": dec,
      "decoder_target_tokens": targets}))

  theirs_model = transformers.T5ForConditionalGeneration.from_pretrained(out).eval()
  with torch.no_grad():
    theirs = theirs_model(input_ids=torch.tensor(enc, dtype=torch.long),
                          decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  assert theirs.shape == ours.shape == (2, 29, VOCAB)
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

  arch, config_back, params_back = hf.import_hf(out)
  assert arch == ED and config_back == model.config
  assert_trees_equal(params, params_back, dtype=np.float32)
  assert hf.read_export_meta(out) == {"vocab_size": 100}


@pytest.mark.parametrize("arch", [CD, ND])
def test_decoder_only_native_export_round_trips(tmp_path, params_of, arch):
  model, params = tiny(arch), params_of(arch)
  out = hf.export_native(params, model.config, arch, str(tmp_path / "single"))
  with open(os.path.join(out, "config.json")) as f:
    config = json.load(f)
  assert config["format"] == "arch_objective" and config["arch"] == arch
  arch_back, config_back, params_back = hf.import_hf(out)
  assert arch_back == arch and config_back == model.config
  assert_trees_equal(params, params_back, dtype=np.float32)

  # Sharded like save_pretrained when the weights pass max_shard_bytes.
  sharded = hf.export_native(params, model.config, arch, str(tmp_path / "sharded"),
                             max_shard_bytes=64 * 1024)
  assert "model.safetensors.index.json" in os.listdir(sharded)
  assert len([f for f in os.listdir(sharded) if f.startswith("model-")]) > 1
  assert_trees_equal(params, hf.import_hf(sharded)[2])


def test_import_rejects_weights_that_do_not_fit(tmp_path, params_of):
  from safetensors.numpy import load_file, save_file
  out = hf.export_hf(params_of(ED), tiny(ED).config, ED, str(tmp_path / "hf"))
  weights = load_file(os.path.join(out, "model.safetensors"))
  weights.pop("decoder.final_layer_norm.weight")
  weights["lm_head.weight"] = weights["shared.weight"] + 1
  save_file(weights, os.path.join(out, "model.safetensors"))
  with pytest.raises(ValueError, match="decoder.final_layer_norm.weight"):
    hf.import_hf(out)
  with pytest.raises(ValueError, match="already holds a config.json"):
    hf.export_hf(params_of(ED), tiny(ED).config, ED, out)


# ---------------------------------------------------------------------------
# Our model directories and the CLI
# ---------------------------------------------------------------------------
def save_model_dir(directory, arch, params, step=3):
  """A model directory as the trainer writes it (state, data position, meta)."""
  model = tiny(arch)
  state = trainer.TrainState.create(jax.tree_util.tree_map(jnp.asarray, params),
                                    optimizers.adafactor(optimizers.rsqrt_decay()))
  state = state.replace(step=jnp.asarray(step, jnp.int32))
  meta = {"arch": arch, "config": dataclasses.asdict(model.config),
          "vocabulary": "test.model", "vocab_size": 100, "task": "local_full_lm",
          "lineage": []}
  saver = checkpoints.Checkpoints(os.path.join(directory, "checkpoints"), async_save=False)
  saver.save(step, state, {"batches": 5}, meta)
  saver.close()
  return state


def convert(*argv):
  """`arch-objective convert ...` as the command line runs it (exit code returned)."""
  from arch_objective import cli as main_cli
  return main_cli.main(["convert", *argv])


def test_load_params_restores_the_params_only(tmp_path, params_of):
  save_model_dir(str(tmp_path), CD, params_of(CD), step=3)
  for path in (tmp_path, tmp_path / "checkpoints", tmp_path / "checkpoints" / "3"):
    params, meta, step = checkpoints.load_params(str(path))
    assert meta["arch"] == CD and step == 3 and meta["task"] == "local_full_lm"
    assert_trees_equal(params_of(CD), params, dtype=np.float32)
  params, _, _ = checkpoints.load_params(str(tmp_path), dtype="bfloat16")
  assert all(v.dtype == jnp.bfloat16 for v in flat(params).values())
  with pytest.raises(ValueError, match="elsewhere': no such directory"):
    checkpoints.load_params(str(tmp_path / "elsewhere"))


def test_switch_arch_cd_to_nd_keeps_every_weight(tmp_path, params_of, capsys):
  src, dst = str(tmp_path / "cd"), str(tmp_path / "nd")
  saved = save_model_dir(src, CD, params_of(CD), step=3)
  assert convert("switch-arch", "--model_dir", src, "--arch", ND, "--out", dst) == 0
  assert json.loads(capsys.readouterr().out.strip())["arch"] == ND

  params, meta, step = checkpoints.load_params(dst)
  assert meta["arch"] == ND and step == 3 and meta["vocab_size"] == 100
  assert meta["lineage"][-1]["arch"] == CD
  assert_trees_equal(params_of(CD), params)
  # The trainer restores the whole state (optimiser included) as an ND model.
  nd = tiny(ND)
  tx = optimizers.adafactor(optimizers.rsqrt_decay())
  abstract = jax.eval_shape(lambda r: trainer.init_state(
      nd, tx, models.default_input_shapes(ND, 1, 8), r), jax.random.PRNGKey(0))
  restorer = checkpoints.Checkpoints(os.path.join(dst, "checkpoints"))
  state, position, _ = restorer.restore(abstract)
  restorer.close()
  assert int(state.step) == 3 and position == {"batches": 5}
  for a, b in zip(jax.tree_util.tree_leaves(saved.opt_state),
                  jax.tree_util.tree_leaves(state.opt_state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))

  assert convert("switch-arch", "--model_dir", src, "--arch", ED, "--out",
                 str(tmp_path / "ed")) == 2
  assert "encoder-decoder's parameters differ" in capsys.readouterr().err


@pytest.mark.slow
def test_cli_t5x_out_then_in_and_hf_out_then_in(tmp_path, params_of, capsys):
  src = str(tmp_path / "ed")
  save_model_dir(src, ED, params_of(ED), step=3)

  assert convert("t5x-out", "--model_dir", src, "--out", str(tmp_path / "t5x")) == 0
  report = json.loads(capsys.readouterr().out.strip())
  assert report["checkpoint"].endswith("checkpoint_3") and report["step"] == 3
  back = str(tmp_path / "back")
  assert convert("t5x-in", "--checkpoint", report["checkpoint"], "--arch", ED, "--size", "tiny",
                 "--config", f"vocab_size={VOCAB}", "--config", "dtype=float32",
                 "--vocab_size", "100", "--out", back) == 0
  capsys.readouterr()
  params, meta, step = checkpoints.load_params(back)
  assert meta["arch"] == ED and step == 3 and meta["lineage"][-1]["step"] == 3
  assert_trees_equal(params_of(ED), params)
  # The step continues: the optimiser's counters agree with it.
  restored = checkpoints.Checkpoints(os.path.join(back, "checkpoints"))
  tx = optimizers.adafactor(optimizers.rsqrt_decay())
  abstract = jax.eval_shape(lambda r: trainer.init_state(
      tiny(ED), tx, models.default_input_shapes(ED, 1, 8, 8, 8), r), jax.random.PRNGKey(0))
  state, _, _ = restored.restore(abstract)
  restored.close()
  assert int(state.opt_state[0].count) == 3 and int(state.step) == 3

  # A decoder-only model cannot take this checkpoint: strict fails and says why ...
  assert convert("t5x-in", "--checkpoint", report["checkpoint"], "--arch", CD, "--size", "tiny",
                 "--config", f"vocab_size={VOCAB}", "--vocab_size", "100",
                 "--out", str(tmp_path / "cd")) == 2
  assert "missing" in capsys.readouterr().err
  # ... and --allow_missing loads what fits and reports the rest.
  assert convert("t5x-in", "--checkpoint", report["checkpoint"], "--arch", CD, "--size", "tiny",
                 "--config", f"vocab_size={VOCAB}", "--vocab_size", "100", "--allow_missing",
                 "--out", str(tmp_path / "cd")) == 0
  skipped = json.loads(capsys.readouterr().out.strip())["skipped"]
  assert "decoder/token_embedder/embedding" in skipped["missing"]
  assert "encoder/encoder_norm/scale" in skipped["unexpected"]

  # The run's vocabulary ("test.model") does not exist: one line naming it and the ways out.
  assert convert("hf-out", "--model_dir", src, "--out", str(tmp_path / "hf")) == 2
  err = capsys.readouterr().err
  assert "test.model" in err and "--no_tokenizer" in err and len(err.splitlines()) == 1
  assert not (tmp_path / "hf").exists()
  assert convert("hf-out", "--model_dir", src, "--out", str(tmp_path / "hf"),
                 "--no_tokenizer") == 0
  assert json.loads(capsys.readouterr().out.strip())["format"] == "T5ForConditionalGeneration"
  assert convert("hf-in", "--hf_dir", str(tmp_path / "hf"), "--out",
                 str(tmp_path / "from_hf")) == 0
  capsys.readouterr()
  params, meta, _ = checkpoints.load_params(str(tmp_path / "from_hf"))
  assert meta["arch"] == ED and meta["vocab_size"] == 100 and meta["vocabulary"] == "test.model"
  assert_trees_equal(params_of(ED), params)


# ---------------------------------------------------------------------------
# Hugging Face exports with their tokenizer, loaded through the Auto classes
# ---------------------------------------------------------------------------
T5_IDS = 32128      # the T5 vocabulary's 32100 ids, padded as t5x pads them


def _ed_logits(model, params, enc, dec):
  return np.asarray(jax.jit(model.compute_logits)(params, {
      "encoder_input_tokens": enc, "decoder_input_tokens": dec,
      "decoder_target_tokens": np.ones_like(dec)}))


def _our_greedy(model, params, enc, steps):
  """Greedy continuation by full forward passes: [b, steps] ids after start id 0."""
  dec = np.zeros((enc.shape[0], 1), np.int32)
  for _ in range(steps):
    logits = _ed_logits(model, params, enc, dec)
    dec = np.concatenate([dec, logits[:, -1].argmax(-1)[:, None].astype(np.int32)], axis=1)
  return dec[:, 1:]


@needs_data
@pytest.mark.parametrize("tied", [True, False], ids=["tied", "untied"])
@pytest.mark.slow
def test_ed_export_loads_with_auto_tokenizer_and_auto_model(tmp_path, tied):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = build_model(ED, "tiny", dtype="float32", vocab_size=T5_IDS,
                      logits_via_embedding=tied)
  params = random_params(model, seed=7)
  out = hf.export_hf(params, model.config, ED, str(tmp_path / "hf"),
                     meta={"vocab_size": 32100}, vocabulary=str(T5_VOCAB))
  assert {"spiece.model", "tokenizer.json", "tokenizer_config.json",
          "generation_config.json"} <= set(os.listdir(out))
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  assert tokenizer("Hello world").input_ids == [8774, 296, 1]      # as T5's
  assert len(tokenizer) == 32100
  assert tokenizer.convert_ids_to_tokens([32099, 32000]) == ["<extra_id_0>", "<extra_id_99>"]

  theirs_model = transformers.AutoModelForSeq2SeqLM.from_pretrained(out).eval()
  assert type(theirs_model).__name__ == "T5ForConditionalGeneration"
  batch = tokenizer(["Is the sky blue? <extra_id_0>", "Hello world"], padding=True,
                    return_tensors="pt")
  enc = batch.input_ids.numpy().astype(np.int32)
  dec = np.array([[0, 8774, 296, 5], [0, 363, 19, 8]], np.int32)
  ours = _ed_logits(model, params, np.where(batch.attention_mask.numpy() > 0, enc, 0), dec)
  with torch.no_grad():
    theirs = theirs_model(input_ids=batch.input_ids, attention_mask=batch.attention_mask,
                          decoder_input_ids=torch.tensor(dec, dtype=torch.long)).logits.numpy()
  np.testing.assert_allclose(theirs, ours, atol=1e-4, rtol=0)

  # generate() works and continues as our greedy decoding does.
  single = tokenizer(["Is the sky blue?"], return_tensors="pt")
  with torch.no_grad():
    generated = theirs_model.generate(**single, max_new_tokens=5, do_sample=False,
                                      min_new_tokens=5)
  assert generated[0, 0].item() == 0
  np.testing.assert_array_equal(
      generated[:, 1:].numpy(), _our_greedy(model, params, single.input_ids.numpy(), 5))

  arch, config_back, params_back = hf.import_hf(out)
  assert arch == ED and config_back == model.config
  assert_trees_equal(params, params_back)


@needs_data
def test_cli_hf_out_writes_the_runs_tokenizer(tmp_path, capsys):
  transformers = pytest.importorskip("transformers")
  model = build_model(ED, "tiny", dtype="float32", vocab_size=T5_IDS)
  params = random_params(model, seed=3)
  src = str(tmp_path / "ed")
  state = trainer.TrainState.create(jax.tree_util.tree_map(jnp.asarray, params),
                                    optimizers.adafactor(optimizers.rsqrt_decay()))
  saver = checkpoints.Checkpoints(os.path.join(src, "checkpoints"), async_save=False)
  saver.save(2, state, {"batches": 2}, {
      "arch": ED, "config": dataclasses.asdict(model.config), "vocabulary": str(T5_VOCAB),
      "vocab_size": 32100, "task": "local_span_corruption", "lineage": []})
  saver.close()
  assert convert("hf-out", "--model_dir", src, "--out", str(tmp_path / "hf")) == 0
  assert json.loads(capsys.readouterr().out.strip())["tokenizer"] == str(T5_VOCAB)
  tokenizer = transformers.AutoTokenizer.from_pretrained(str(tmp_path / "hf"))
  assert tokenizer("Hello world").input_ids == [8774, 296, 1]


@needs_data
def test_a_tokenizer_that_disagrees_with_ours_is_refused_before_writing(tmp_path, monkeypatch):
  transformers = pytest.importorskip("transformers")
  model = tiny(ED)
  original = transformers.T5Tokenizer.from_pretrained

  def lossy(*args, **kwargs):     # a tokenizer that drops a piece of the vocabulary
    return original(*args, **dict(kwargs, extra_ids=kwargs["extra_ids"] - 1))

  monkeypatch.setattr(transformers.T5Tokenizer, "from_pretrained", lossy)
  with pytest.raises(ValueError, match="encodes.*ours as.*--no_tokenizer"):
    hf.export_hf(random_params(model, 1), model.config, ED, str(tmp_path / "hf"),
                 meta={"vocab_size": 32100}, vocabulary=str(T5_VOCAB))
  assert not (tmp_path / "hf").exists()


@needs_data
@pytest.mark.parametrize("arch", [CD, ND])
@pytest.mark.slow
def test_decoder_only_hf_export_loads_with_auto_classes_and_its_tokenizer(tmp_path, arch):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  model = build_model(arch, "tiny", dtype="float32", vocab_size=T5_IDS)
  params = random_params(model, seed=11)
  out = hf.export_hf(params, model.config, arch, str(tmp_path / "hf"),
                     meta={"vocab_size": 32100}, vocabulary=str(T5_VOCAB))
  tokenizer = transformers.AutoTokenizer.from_pretrained(out)
  ids = tokenizer("Hello world").input_ids
  assert ids == [8774, 296, 1]
  theirs_model = transformers.AutoModelForCausalLM.from_pretrained(
      out, trust_remote_code=True).eval()
  row = np.array([[0] + ids[:-1]], np.int32)
  batch = {"decoder_input_tokens": row, "decoder_target_tokens": np.array([ids], np.int32)}
  extra = {}
  if arch == ND:
    batch["decoder_causal_attention"] = np.array([[1, 1, 0]], np.int32)
    extra["prefix_lengths"] = torch.tensor([2])
  ours = np.asarray(jax.jit(model.compute_logits)(params, batch))
  with torch.no_grad():
    theirs = theirs_model(input_ids=torch.tensor(row, dtype=torch.long), **extra).logits
  np.testing.assert_allclose(theirs.numpy(), ours, atol=1e-4, rtol=0)
  arch_back, config_back, params_back = hf.import_hf(out)
  assert arch_back == arch and config_back == model.config
  assert_trees_equal(params, params_back)
