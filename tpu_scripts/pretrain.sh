#!/usr/bin/env bash
# Pretrain from scratch on a TPU slice: launch.sh --mode train with runs/pretrain.gin. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --gin_file EXPERIMENT
                   --model_dir DIR [--train_steps N] [launch.sh options] [-- ARG...]

Pretraining (spec §2.7-2.8): launch.sh --mode train --run_file runs/pretrain.gin, binding
MODEL_DIR (and TRAIN_STEPS with --train_steps). EXPERIMENT is a pretraining gin file, e.g.
experiments/paper/cd_flm.gin (or models/, sizes/ and objectives/ files, to which
runs/pretrain.gin is added). A run resumes from the latest checkpoint in DIR.

Required:
  --tpu, --zone, --project   as launch.sh (or ARCH_OBJECTIVE_TPU / _ZONE / _PROJECT)
  --gin_file EXPERIMENT      the experiment (repeatable)
  --model_dir DIR            e.g. gs://BUCKET/runs/cd_flm
  --train_steps N            unless the gin files set TRAIN_STEPS (the paper's experiments
                             do); the paper: 131072 x 2048 rows x 626 tokens = 168B tokens

Every other launch.sh option passes through (launch.sh --help), e.g. --tfds_data_dir,
--gin NAME=VALUE, --gcsfuse, --env, --status, --stop, --dry-run.

Example:
  $AO_SCRIPT --tpu arch-v4-64 --zone us-central2-b --project my-proj \\
      --gin_file experiments/paper/cd_flm.gin --model_dir gs://my-bucket/runs/cd_flm \\
      --tfds_data_dir gs://my-bucket/tensorflow_datasets
USAGE
}
if has_option -h "$@" || has_option --help "$@"; then usage; exit 0; fi

REQUIRED="--gin_file --model_dir"
if has_option --status "$@" || has_option --stop "$@"; then REQUIRED="--model_dir"; fi
launch_wrapper "$REQUIRED" --mode train --run_file runs/pretrain.gin -- "$@"
