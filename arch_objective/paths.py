"""Local and remote paths: MODEL_DIR, checkpoints and results on a disk or in a bucket.

A path with a scheme (`gs://bucket/runs/cd_flm`, `s3://...`, `az://...`) is remote: it is
kept verbatim and read and written through `etils.epath` (TensorFlow's `tf.io.gfile` when
TensorFlow is installed, else fsspec, e.g. `gcsfs` for gs://). Every other path is local
and made absolute, with `~` expanded. Orbax checkpoints take both kinds as they are.

  normalize("runs/cd_flm")        -> "/home/me/runs/cd_flm"
  normalize("gs://b/runs/cd_flm/") -> "gs://b/runs/cd_flm"
  join("gs://b/run", "checkpoints", "12") -> "gs://b/run/checkpoints/12"

Nothing here imports TensorFlow: a local path never touches a remote backend.
"""
from __future__ import annotations

import os
import posixpath
import re
import shutil
from typing import Optional

from etils import epath

from arch_objective.errors import UserError

# The schemes etils.epath reads and writes (hf:// is read-only and not offered).
REMOTE_SCHEMES = ("gs", "s3", "az")
_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")


def scheme(path) -> Optional[str]:
  """The scheme of `path` (`'gs'` for `gs://b/x`), None for a local path."""
  match = _SCHEME.match(os.fspath(path))
  return match.group(1).lower() if match else None


def is_remote(path) -> bool:
  return scheme(path) is not None


def _check_scheme(path: str, what: str):
  found = scheme(path)
  if found is not None and found not in REMOTE_SCHEMES:
    raise UserError(f"{what} {path!r} has the scheme '{found}://', which cannot be read or "
                    f"written here; expected a local path or one of "
                    f"{', '.join(s + '://' for s in REMOTE_SCHEMES)}.")


def normalize(path, what: str = "path") -> str:
  """A remote path verbatim (without a trailing '/'), a local one absolute.

  Raises ValueError naming `what` (e.g. 'MODEL_DIR') for a scheme that cannot be used.
  """
  path = os.fspath(path)
  _check_scheme(path, what)
  if is_remote(path):
    body = path.split("://", 1)[1].rstrip("/")
    return f"{scheme(path)}://{body}"
  return os.path.abspath(os.path.expanduser(path))


def join(path, *parts: str) -> str:
  """`os.path.join` for local paths, '/'-joined for remote ones."""
  path = os.fspath(path)
  if is_remote(path):
    return posixpath.join(path, *parts)
  return os.path.join(path, *parts)


def stays_inside(name: str) -> bool:
  """Whether the relative name `name` (read from a file: an index, a manifest) names
  something inside the directory it is relative to: not absolute, not a URL, and no
  `..` that climbs above it. Symbolic links are not resolved."""
  depth = 0
  for part in name.replace("\\", "/").split("/"):
    if part == "..":
      depth -= 1
      if depth < 0:
        return False
    elif part not in ("", "."):
      depth += 1
  return not name.startswith(("/", "\\")) and "://" not in name


def basename(path) -> str:
  path = os.fspath(path).rstrip("/")
  return posixpath.basename(path) if is_remote(path) else os.path.basename(path)


def dirname(path) -> str:
  path = os.fspath(path).rstrip("/")
  return posixpath.dirname(path) if is_remote(path) else os.path.dirname(path)


def as_path(path) -> epath.Path:
  """An `epath.Path` of a local or remote path (after `normalize`'s scheme check)."""
  path = os.fspath(path)
  _check_scheme(path, "path")
  return epath.Path(path)


class Unreachable(UserError):
  """Remote storage did not answer whether a path exists (credentials, permissions,
  network): not the same as an answer that it does not exist."""


def _first_line(error: BaseException, limit: int = 300) -> str:
  text = " ".join(str(error).split()) or type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + "..."


def _ask(path, question):
  """`question(epath.Path)` of `path`; for a remote path, any error of the storage
  backend (gcsfs, TensorFlow's gfile, google-auth, tensorstore raise their own types)
  becomes an `Unreachable` naming the path and quoting the storage's error."""
  p = as_path(path)
  if not is_remote(path):
    return question(p)
  try:
    return question(p)
  except UserError:
    raise
  except Exception as e:  # every backend has its own exception types
    raise Unreachable(
        f"cannot reach {path} (the storage did not answer whether it exists: "
        f"{type(e).__name__}: {_first_line(e)}); check the credentials (e.g. `gcloud auth "
        f"application-default login` or GOOGLE_APPLICATION_CREDENTIALS), the bucket's "
        f"permissions and the network.") from e


def exists(path) -> bool:
  """Whether `path` exists; `Unreachable` when remote storage cannot tell."""
  return _ask(path, lambda p: p.exists())


def isdir(path) -> bool:
  """Whether `path` is a directory; `Unreachable` when remote storage cannot tell."""
  return _ask(path, lambda p: p.is_dir())


def isfile(path) -> bool:
  """Whether `path` is a file; `Unreachable` when remote storage cannot tell."""
  return _ask(path, lambda p: p.exists() and not p.is_dir())


def listdir(path) -> list[str]:
  """Names in a directory (an empty list if it does not exist)."""
  p = as_path(path)
  return sorted(c.name for c in p.iterdir()) if p.is_dir() else []


def makedirs(path):
  as_path(path).mkdir(parents=True, exist_ok=True)


def read_text(path) -> str:
  return as_path(path).read_text()


def write_text(path, text: str):
  """Write a whole text file (a remote file appears complete or not at all)."""
  as_path(path).write_text(text)


def read_bytes(path) -> bytes:
  return as_path(path).read_bytes()


def write_bytes(path, data: bytes):
  as_path(path).write_bytes(data)


def remove(path):
  as_path(path).unlink()


def copy(src, dst):
  """Copy one file; across local and remote storage the bytes are streamed."""
  if scheme(src) == scheme(dst):
    as_path(src).copy(dst, overwrite=True)
    return
  with as_path(src).open("rb") as f_in, as_path(dst).open("wb") as f_out:
    shutil.copyfileobj(f_in, f_out, _CHUNK)


_CHUNK = 64 * 1024 * 1024


def copytree(src, dst, skip: tuple[str, ...] = ()):
  """Copy the files under `src` to `dst` (local or remote, either way), except those
  named in `skip`; directories are created as needed."""
  src = os.fspath(as_path(src))
  for root, _, files in as_path(src).walk():
    relative = os.fspath(root)[len(src):].strip("/")
    target = join(dst, *relative.split("/")) if relative else os.fspath(dst)
    makedirs(target)
    for name in files:
      if name not in skip:
        copy(join(os.fspath(root), name), join(target, name))
