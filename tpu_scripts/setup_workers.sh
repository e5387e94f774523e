#!/usr/bin/env bash
# Install arch-objective on every worker of a TPU VM or pod slice. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --package SOURCE [options]

On every worker: copy the package, create a Python 3.11 virtual environment, install the
pinned requirements (requirements/core.txt, prompts.txt, nodeps.txt with --no-deps,
promptsource 0.2.3 with --no-deps --ignore-requires-python), jax[tpu], the package itself
(--no-deps), then check that every worker sees the TPU:
python -c 'import jax; print(jax.device_count())'.
Run it again after a change: the environment is reused and the package reinstalled.

Required (flag or environment variable):
  --tpu NAME                 TPU name                           (ARCH_OBJECTIVE_TPU)
  --zone ZONE                zone                               (ARCH_OBJECTIVE_ZONE)
  --project PROJECT          Google Cloud project               (ARCH_OBJECTIVE_PROJECT)
  --package SOURCE           what to install, one of:
                               a wheel (python -m pip wheel --no-deps -w dist .),
                               a local source folder (copied without .git, .venv, build/),
                               a git URL (https://..., git@..., git+...), cloned on the
                               workers at --ref

Options:
  --ref REF                  branch, tag or commit of a git --package (default: its HEAD)
  --requirements DIR         pinned requirements for a wheel (default: $AO_REPO/requirements;
                             a folder or git source brings its own requirements/)
  --with_eval                also install requirements/eval.txt (lm-evaluation-harness,
                             torch, transformers: needed by 'eval harness' only)
  --jax SPEC                 the TPU build of JAX (default: jax[tpu]==0.10.2, matching
                             requirements/core.txt)
  --python VERSION           Python of the environment, installed with uv (default: 3.11)
  --remote_dir DIR           install folder on the workers, absolute or relative to the
                             home folder (default: $AO_REMOTE_ROOT_DEFAULT); the environment is DIR/venv
  --gcsfuse_bucket BUCKET    also install gcsfuse and mount gs://BUCKET at
                             $AO_MOUNT_ROOT_DEFAULT/BUCKET on every worker (repeatable; optional,
                             arch-objective reads and writes gs:// itself); see launch.sh --gcsfuse
  --worker all|N[,N...]      which workers (default: all)
  --ssh_flag ARG             one more word for gcloud ssh/scp, e.g.
                             --ssh_flag=--tunnel-through-iap (repeatable)
  --skip_check               do not run the jax device check
  --dry-run                  print the tar/gcloud commands, run nothing
  -h, --help                 this help

Example:
  python -m pip wheel --no-deps -w dist .
  $AO_SCRIPT --tpu arch-v4-64 --zone us-central2-b --project my-proj \\
      --package dist/arch_objective-0.1.0-py3-none-any.whl --gcsfuse_bucket my-bucket
EOF
}

PACKAGE=""
REF=""
REQUIREMENTS=""
WITH_EVAL=0
JAX_SPEC="jax[tpu]==0.10.2"
PYTHON_VERSION=3.11
REMOTE_DIR=$AO_REMOTE_ROOT_DEFAULT
BUCKETS=()
WORKER=all
CHECK=1
while (($#)); do
  opt_name "$1"
  case $OPTNAME in
    -h | --help) usage; exit 0 ;;
    --package) optarg "$@"; PACKAGE=$OPTVAL ;;
    --ref) optarg "$@"; REF=$OPTVAL ;;
    --requirements) optarg "$@"; REQUIREMENTS=$OPTVAL ;;
    --with_eval) no_value "$@"; WITH_EVAL=1 ;;
    --jax) optarg "$@"; JAX_SPEC=$OPTVAL ;;
    --python) optarg "$@"; PYTHON_VERSION=$OPTVAL ;;
    --remote_dir) optarg "$@"; REMOTE_DIR=${OPTVAL%/} ;;
    --gcsfuse_bucket) optarg "$@"; BUCKETS+=("${OPTVAL#gs://}") ;;
    --worker) optarg "$@"; WORKER=$OPTVAL ;;
    --ssh_flag) optarg "$@"; SSH_FLAGS+=("$OPTVAL") ;;
    --skip_check) no_value "$@"; CHECK=0 ;;
    *) common_option "$@" || usage_error "unknown option: $1" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_target
require PACKAGE --package
check_worker "$WORKER"
for bucket in ${BUCKETS[@]+"${BUCKETS[@]}"}; do
  if [[ ! $bucket =~ ^[a-z0-9][-a-z0-9_.]*[a-z0-9]$ ]]; then
    usage_error "--gcsfuse_bucket expects a bucket name like my-bucket; found '$bucket'"
  fi
done

case $PACKAGE in
  git+* | git@* | https://* | http://* | ssh://*) KIND=git ;;
  *.whl)
    [[ -f $PACKAGE ]] || usage_error "--package $PACKAGE: no such wheel file"
    KIND=wheel
    ;;
  *)
    [[ -d $PACKAGE ]] || usage_error "--package $PACKAGE is not a wheel (.whl), a folder or a git URL"
    [[ -f $PACKAGE/setup.py || -f $PACKAGE/pyproject.toml ]] ||
      usage_error "--package $PACKAGE has no setup.py or pyproject.toml"
    KIND=dir
    ;;
esac
if [[ -n $REF && $KIND != git ]]; then
  usage_error "--ref is for a git --package only"
fi
if [[ -n $REQUIREMENTS && $KIND != wheel ]]; then
  usage_error "--requirements is for a wheel --package (a folder or git source brings its own)"
fi
if [[ $KIND == wheel ]]; then
  REQUIREMENTS=${REQUIREMENTS:-$AO_REPO/requirements}
  for f in core.txt nodeps.txt prompts.txt; do
    [[ -f $REQUIREMENTS/$f ]] || usage_error "--requirements $REQUIREMENTS has no $f"
  done
fi

ROOT=$(remote_path "$REMOTE_DIR")   # shell text for the install folder on a worker
REMOTE_DIR_SCP=$REMOTE_DIR          # scp: a relative destination is under the home folder

# 1. Make the install folder (and replace the previous copy of the sources).
step "prepare $REMOTE_DIR on the workers"
tpu_ssh "$WORKER" "set -euo pipefail
mkdir -p $ROOT/incoming
rm -rf $ROOT/incoming/*"

# 2. Copy the package (and, for a wheel, the requirements) to each worker.
case $KIND in
  wheel)
    step "copy the wheel and the pinned requirements"
    tpu_scp "$WORKER" "$PACKAGE" "$REMOTE_DIR_SCP/incoming/"
    tpu_scp "$WORKER" "$REQUIREMENTS" "$REMOTE_DIR_SCP/incoming/requirements" --recurse
    ;;
  dir)
    TARBALL=${TMPDIR:-/tmp}/arch-objective-src.tar.gz
    step "pack $PACKAGE (without .git, .venv, build outputs) and copy it"
    run_or_echo tar -czf "$TARBALL" -C "$PACKAGE" --exclude=./.git --exclude=./.venv \
      --exclude=./build --exclude=./dist --exclude='*.egg-info' --exclude=__pycache__ .
    tpu_scp "$WORKER" "$TARBALL" "$REMOTE_DIR_SCP/incoming/src.tar.gz"
    ;;
  git) ;;
esac

# 3. Install on every worker.
case $KIND in
  wheel)
    SOURCE_SETUP="req=$ROOT/incoming/requirements
pkg=\$(ls $ROOT/incoming/*.whl)"
    ;;
  dir)
    SOURCE_SETUP="rm -rf $ROOT/src && mkdir -p $ROOT/src
tar -xzf $ROOT/incoming/src.tar.gz -C $ROOT/src
req=$ROOT/src/requirements
pkg=$ROOT/src"
    ;;
  git)
    SOURCE_SETUP="rm -rf $ROOT/src
git clone --quiet $(shell_quote "${PACKAGE#git+}") $ROOT/src${REF:+
git -C $ROOT/src checkout --quiet $(shell_quote "$REF")}
req=$ROOT/src/requirements
pkg=$ROOT/src"
    ;;
esac
EVAL_REQ=""
if ((WITH_EVAL)); then
  # shellcheck disable=SC2016  # expanded on the worker
  EVAL_REQ=' -r "$req/eval.txt"'
fi
GCSFUSE=""
if ((${#BUCKETS[@]})); then
  # The apt repository and key of gcsfuse, as Google's install instructions give them.
  GCSFUSE="if ! command -v gcsfuse >/dev/null; then
  echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null
  curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null
  sudo apt-get update -qq && sudo apt-get install -y -qq gcsfuse
fi"
  for bucket in "${BUCKETS[@]}"; do
    mnt=$(shell_quote "$AO_MOUNT_ROOT_DEFAULT/$bucket")
    # --rename-dir-limit: checkpoints are committed by renaming a temporary folder.
    GCSFUSE+="
sudo mkdir -p $mnt && sudo chown \"\$(id -u):\$(id -g)\" $mnt
mountpoint -q $mnt || gcsfuse --implicit-dirs --rename-dir-limit=1000000 $(shell_quote "$bucket") $mnt"
  done
fi

step "install Python $PYTHON_VERSION, the pinned requirements and the package on the workers"
tpu_ssh "$WORKER" "set -euo pipefail
${GCSFUSE:+$GCSFUSE
}$SOURCE_SETUP
venv=$ROOT/venv
if ! command -v uv >/dev/null && [ ! -x \"\$HOME/.local/bin/uv\" ]; then
  python3 -m pip install --quiet --user uv
fi
uv=\$(command -v uv || echo \"\$HOME/.local/bin/uv\")
[ -x \"\$venv/bin/python\" ] || \"\$uv\" venv --quiet --seed --python $(shell_quote "$PYTHON_VERSION") \"\$venv\"
pip=(\"\$venv/bin/python\" -m pip --disable-pip-version-check --quiet)
\"\${pip[@]}\" install --upgrade pip wheel
\"\${pip[@]}\" install -r \"\$req/core.txt\" -r \"\$req/prompts.txt\"$EVAL_REQ
\"\${pip[@]}\" install --no-deps -r \"\$req/nodeps.txt\"
\"\${pip[@]}\" install --no-deps --ignore-requires-python promptsource==0.2.3
\"\${pip[@]}\" install $(shell_quote "$JAX_SPEC")
\"\${pip[@]}\" install --no-deps --force-reinstall \"\$pkg\"
\"\$venv/bin/arch-objective\" --help >/dev/null
echo \"\$(hostname): arch-objective installed in \$venv\""

# 4. Every worker at once: each must see all the slice's chips.
if ((CHECK)); then
  step "check that JAX sees the TPU on every worker"
  tpu_ssh "$WORKER" "set -euo pipefail
$ROOT/venv/bin/python -c 'import jax; print(jax.process_index(), jax.device_count(), jax.local_device_count(), \"(process, devices, local devices)\")'"
fi
