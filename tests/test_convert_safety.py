"""Converters refuse what a tampered or damaged input asks of them, in one line.

Every input is first written by the converters themselves (a tiny model's export, t5x
checkpoint or model directory), then tampered with: an index or msgpack naming files
outside the directory (which exist, so reading them would succeed), safetensors headers
that lie, unknown config fields, bad options. The commands are run in-process through
the real command line: exit 2, one line on stderr, no traceback.
"""
import json
import os
import shutil
import struct

import flax.serialization
import numpy as np
import pytest

from arch_objective import build_model, models
from arch_objective.convert import hf, hf_decoder, hf_files, t5x
from arch_objective.training import checkpoints

import helpers
from helpers import VOCAB as T5_VOCAB, random_params

CD, ED = models.CAUSAL_DECODER, models.ENCODER_DECODER
ROWS = 128


def tiny(arch, rows=ROWS, dtype="float32"):
  return build_model(arch, "tiny", dtype=dtype, vocab_size=rows)


def convert(capsys, *argv):
  """`arch-objective convert ...` in-process: (exit code, stdout, stderr)."""
  return helpers.run_cli(capsys, ["convert", *argv])


def assert_one_line_refusal(rc, err, *expected):
  assert rc == 2, err
  assert len(err.strip().splitlines()) == 1, err
  assert "Traceback" not in err and err.startswith("arch-objective convert "), err
  for text in expected:
    assert text in err, (text, err)


@pytest.fixture(scope="module")
def cd_params():
  return random_params(tiny(CD), seed=1)


@pytest.fixture(scope="module")
def ed_params():
  return random_params(tiny(ED), seed=2)


# ---------------------------------------------------------------------------
# Names read from a file stay inside the directory
# ---------------------------------------------------------------------------
def sharded_export_pointing_outside(tmp_path, params, target):
  """A sharded native export whose index maps every tensor to `target` (relative or
  absolute), where a complete single-file export of the same weights lies: read, it
  would import cleanly."""
  config = tiny(CD).config
  outside = hf.export_native(params, config, CD, str(tmp_path / "outside"))
  out = hf.export_native(params, config, CD, str(tmp_path / "hf"), max_shard_bytes=64 * 1024)
  if target == "absolute":
    target = os.path.join(outside, hf_files.WEIGHTS_FILE)
  index = os.path.join(out, hf_files.INDEX_FILE)
  with open(index) as f:
    content = json.load(f)
  content["weight_map"] = {name: target for name in content["weight_map"]}
  with open(index, "w") as f:
    json.dump(content, f)
  return out, index, target


@pytest.mark.parametrize("target", ["../outside/model.safetensors", "absolute",
                                    "shards/../../outside/model.safetensors"])
def test_an_index_naming_a_file_outside_the_directory_is_refused(tmp_path, cd_params,
                                                                 target):
  out, index, target = sharded_export_pointing_outside(tmp_path, cd_params, target)
  with pytest.raises(ValueError) as e:
    hf.import_hf(out)
  message = str(e.value)
  assert "\n" not in message
  assert index in message and repr(target) in message and f"directory {out}" in message
  assert "decoder/" in message                 # the entry: a tensor name
  # The decoder-only reader goes through the same helper.
  with pytest.raises(ValueError, match="outside the directory"):
    hf_decoder.read_decoder_only(out)


def test_hf_in_refuses_an_index_escape_in_one_line(tmp_path, cd_params, capsys):
  out, index, target = sharded_export_pointing_outside(
      tmp_path, cd_params, "../outside/model.safetensors")
  rc, stdout, err = convert(capsys, "hf-in", "--hf_dir", out, "--out", str(tmp_path / "md"))
  assert_one_line_refusal(rc, err, "hf-in", index, target, "outside the directory")
  assert stdout == "" and not (tmp_path / "md").exists()


def test_an_index_naming_files_inside_the_directory_is_read(tmp_path, cd_params):
  out = hf.export_native(cd_params, tiny(CD).config, CD, str(tmp_path / "hf"),
                         max_shard_bytes=64 * 1024)
  index = os.path.join(out, hf_files.INDEX_FILE)
  with open(index) as f:
    content = json.load(f)
  os.makedirs(os.path.join(out, "sub"))
  content["weight_map"] = {k: f"sub/.././{v}" for k, v in content["weight_map"].items()}
  with open(index, "w") as f:
    json.dump(content, f)
  arch, _, params = hf.import_hf(out)
  assert arch == CD
  np.testing.assert_array_equal(params["decoder"]["decoder_norm"]["scale"],
                                cd_params["decoder"]["decoder_norm"]["scale"])


def t5x_checkpoint_pointing_outside(tmp_path, params, how):
  """A t5x checkpoint whose msgpack spec of one array names a copy of that array
  outside the checkpoint directory (absolute, or relative with '..')."""
  ckpt = t5x.write_t5x_checkpoint(params, str(tmp_path / "t5x"), 7)
  dotted = "target.decoder.decoder_norm.scale"
  outside = tmp_path / "outside"
  shutil.copytree(os.path.join(ckpt, dotted), outside / dotted)
  target = str(outside / dotted) if how == "absolute" else f"../../outside/{dotted}"
  file = os.path.join(ckpt, t5x.CHECKPOINT_FILE)
  with open(file, "rb") as f:
    contents = flax.serialization.msgpack_restore(f.read())
  contents["optimizer"]["target"]["decoder"]["decoder_norm"]["scale"]["kvstore"]["path"] = target
  with open(file, "wb") as f:
    f.write(flax.serialization.msgpack_serialize(contents))
  return ckpt, file, target


@pytest.mark.parametrize("how", ["absolute", "relative"])
def test_a_t5x_array_path_outside_the_checkpoint_is_refused(tmp_path, cd_params, how):
  ckpt, file, target = t5x_checkpoint_pointing_outside(tmp_path, cd_params, how)
  with pytest.raises(ValueError) as e:
    t5x.read_t5x_checkpoint(ckpt)
  message = str(e.value)
  assert "\n" not in message
  assert file in message and "decoder/decoder_norm/scale" in message
  assert repr(target) in message and f"checkpoint directory {ckpt}" in message


def test_a_gcs_style_spec_with_an_absolute_path_is_refused(tmp_path, cd_params):
  ckpt = t5x.write_t5x_checkpoint(cd_params, str(tmp_path / "t5x"), 7)
  spec = {"driver": "zarr", "kvstore": {"driver": "gcs", "bucket": t5x.DUMMY_BUCKET},
          "path": "/etc/target.decoder.decoder_norm.scale"}
  with pytest.raises(ValueError, match="outside the checkpoint directory"):
    t5x.resolve_spec(spec, ckpt, "decoder/decoder_norm/scale")
  with pytest.raises(ValueError, match="outside the checkpoint directory"):
    t5x.resolve_spec(dict(spec, path="a/../../b"), "gs://bucket/run/checkpoint_7", "x")


def test_t5x_in_refuses_an_absolute_array_path_in_one_line(tmp_path, cd_params, capsys):
  ckpt, file, target = t5x_checkpoint_pointing_outside(tmp_path, cd_params, "absolute")
  rc, _, err = convert(capsys, "t5x-in", "--checkpoint", ckpt, "--arch", CD, "--size",
                       "tiny", "--config", f"vocab_size={ROWS}", "--vocab_size", "100",
                       "--out", str(tmp_path / "md"))
  assert_one_line_refusal(rc, err, "t5x-in", file, target, "decoder/decoder_norm/scale")


# ---------------------------------------------------------------------------
# Damaged safetensors and config files
# ---------------------------------------------------------------------------
def damage(raw: bytes, how: str) -> bytes:
  n = struct.unpack("<Q", raw[:8])[0]
  if how == "truncated":
    return raw[:len(raw) // 2]
  if how == "header_too_long":
    return struct.pack("<Q", len(raw) * 4) + raw[8:]
  if how == "header_not_json":
    return raw[:8] + b"#" * n + raw[8 + n:]
  header = json.loads(raw[8:8 + n])      # "offsets_outside": past the end of the data
  name = next(k for k in header if k != "__metadata__")
  begin = header[name]["data_offsets"][0]
  header[name]["data_offsets"] = [begin, begin + 10 ** 6]
  text = json.dumps(header).encode()
  text += b" " * (-len(text) % 8)
  return struct.pack("<Q", len(text)) + text + raw[8 + n:]


@pytest.mark.parametrize("how", ["truncated", "header_too_long", "header_not_json",
                                 "offsets_outside"])
def test_a_damaged_safetensors_file_is_named_in_one_line(tmp_path, cd_params, capsys, how):
  out = hf.export_native(cd_params, tiny(CD).config, CD, str(tmp_path / "hf"))
  weights = os.path.join(out, hf_files.WEIGHTS_FILE)
  with open(weights, "rb") as f:
    raw = f.read()
  with open(weights, "wb") as f:
    f.write(damage(raw, how))
  with pytest.raises(ValueError, match="not a readable safetensors file"):
    hf.import_hf(out)
  rc, _, err = convert(capsys, "hf-in", "--hf_dir", out, "--out", str(tmp_path / "md"))
  assert_one_line_refusal(rc, err, weights, "not a readable safetensors file")


@pytest.mark.parametrize("file", [hf_files.CONFIG_FILE, hf_files.INDEX_FILE])
def test_a_config_or_index_that_is_not_json_is_named(tmp_path, cd_params, capsys, file):
  out = hf.export_native(cd_params, tiny(CD).config, CD, str(tmp_path / "hf"),
                         max_shard_bytes=64 * 1024)
  with open(os.path.join(out, file), "w") as f:
    f.write("{'not': json")
  rc, _, err = convert(capsys, "hf-in", "--hf_dir", out, "--out", str(tmp_path / "md"))
  assert_one_line_refusal(rc, err, os.path.join(out, file), "is not valid JSON")


@pytest.mark.parametrize("where", ["config", "block"])
def test_an_unknown_field_in_our_config_block_is_refused(tmp_path, ed_params, where):
  pytest.importorskip("transformers")
  out = hf.export_hf(ed_params, tiny(ED).config, ED, str(tmp_path / "hf"))
  file = os.path.join(out, hf_files.CONFIG_FILE)
  with open(file) as f:
    config = json.load(f)
  block = config[hf_files.CONFIG_BLOCK]
  (block["config"] if where == "config" else block)["bogus_field"] = 1
  with open(file, "w") as f:
    json.dump(config, f)
  with pytest.raises(ValueError) as e:
    hf.import_hf(out)
  message = str(e.value)
  assert file in message and "bogus_field" in message
  assert ("emb_dim" if where == "config" else "'meta'") in message


# ---------------------------------------------------------------------------
# Options
# ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def model_directory(tiny_model_dirs):
  """The tiny causal decoder's model directory of conftest (step 3, 128 rows)."""
  return tiny_model_dirs(CD)[0]


@pytest.mark.parametrize("command", ["t5x-out", "hf-out"])
def test_an_unknown_dtype_names_the_option_and_the_accepted_values(tmp_path, capsys,
                                                                   model_directory, command):
  extra = ["--no_tokenizer"] if command == "hf-out" else []
  rc, _, err = convert(capsys, command, "--model_dir", model_directory, "--out",
                       str(tmp_path / "out"), "--dtype", "float13", *extra)
  assert_one_line_refusal(rc, err, "--dtype", "float32, bfloat16, float16", "'float13'")
  assert not (tmp_path / "out").exists()


def test_t5x_in_refuses_a_vocab_size_the_embedding_does_not_pad(tmp_path, capsys):
  params = random_params(tiny(CD, rows=256), seed=3)
  ckpt = t5x.write_t5x_checkpoint(params, str(tmp_path / "t5x"), 1)
  rc, _, err = convert(capsys, "t5x-in", "--checkpoint", ckpt, "--arch", CD, "--size", "tiny",
                       "--config", "vocab_size=256", "--vocab_size", "10",
                       "--out", str(tmp_path / "md"))
  assert_one_line_refusal(rc, err, "vocab_size 10", "256 rows")
  assert not (tmp_path / "md" / "checkpoints").exists()


@pytest.mark.skipif(not T5_VOCAB.exists(), reason=f"{T5_VOCAB} not found")
def test_t5x_in_refuses_a_vocab_size_below_the_vocabularys_pieces(tmp_path, capsys,
                                                                 cd_params):
  ckpt = t5x.write_t5x_checkpoint(cd_params, str(tmp_path / "t5x"), 1)
  rc, _, err = convert(capsys, "t5x-in", "--checkpoint", ckpt, "--arch", CD, "--size", "tiny",
                       "--config", f"vocab_size={ROWS}", "--vocab_size", "10",
                       "--vocabulary", str(T5_VOCAB), "--out", str(tmp_path / "md"))
  assert_one_line_refusal(rc, err, "--vocab_size 10", "32000 pieces", str(T5_VOCAB))


@pytest.mark.parametrize("stored,config,recorded", [
    ("float32", [], "float32"), ("bfloat16", [], "bfloat16"),
    ("float32", ["--config", "dtype=bfloat16"], "bfloat16")])
def test_t5x_in_keeps_the_checkpoints_dtype_unless_one_is_given(tmp_path, capsys, ed_params,
                                                               stored, config, recorded):
  assert build_model(ED, "tiny").config.dtype == "bfloat16"   # the preset's default
  ckpt = t5x.write_t5x_checkpoint(ed_params, str(tmp_path / "t5x"), 5, dtype=stored)
  out = str(tmp_path / "md")
  rc, stdout, err = convert(capsys, "t5x-in", "--checkpoint", ckpt, "--arch", ED, "--size",
                            "tiny", "--config", f"vocab_size={ROWS}", *config,
                            "--vocab_size", "100", "--out", out)
  assert rc == 0, err
  assert json.loads(stdout.strip())["dtype"] == recorded
  params, meta, _ = checkpoints.load_params(out)
  assert meta["config"]["dtype"] == recorded
  scale = params["decoder"]["decoder_norm"]["scale"]
  assert scale.dtype == np.float32          # parameters are kept in float32
