#!/usr/bin/env bash
# Multitask prompted finetuning (MT-F) on the T0 mixture from a checkpoint. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --gin_file EXPERIMENT
                   --model_dir DIR --initial_checkpoint CKPT [--train_steps N]
                   [launch.sh options] [-- ARG...]

MT-F (spec §3): launch.sh --mode train --run_file runs/finetune_t0.gin, binding MODEL_DIR,
INITIAL_CHECKPOINT_PATH (and TRAIN_STEPS with --train_steps). EXPERIMENT is an MT-F gin file, e.g.
experiments/paper/cd_flm_mtf.gin (or models/ and sizes/ files, to which
runs/finetune_t0.gin is added). The step counter, optimiser state and schedule continue
from CKPT, so TRAIN_STEPS counts the restored steps.

Required:
  --tpu, --zone, --project   as launch.sh (or ARCH_OBJECTIVE_TPU / _ZONE / _PROJECT)
  --gin_file EXPERIMENT      the experiment (repeatable)
  --model_dir DIR            where MT-F writes, e.g. gs://BUCKET/runs/cd_flm_mtf
  --initial_checkpoint CKPT  the pretrained MODEL_DIR (latest step) or
                             MODEL_DIR/checkpoints/<step>, e.g. gs://BUCKET/runs/cd_flm
  --train_steps N            unless the gin files set TRAIN_STEPS (the paper's experiments
                             do); the paper: 141072 = 131072 + 10000 (10,000 x 1024 rows x
                             1280 tokens = 13.1B tokens)

Every other launch.sh option passes through (launch.sh --help), e.g. --gin NAME=VALUE,
--gcsfuse, --env, --status, --stop, --dry-run. The T0 mixture comes from Hugging Face
datasets unless the experiment binds DATA_DIR.

Example:
  $AO_SCRIPT --tpu arch-v4-64 --zone us-central2-b --project my-proj \\
      --gin_file experiments/paper/cd_flm_mtf.gin --model_dir gs://my-bucket/runs/cd_flm_mtf \\
      --initial_checkpoint gs://my-bucket/runs/cd_flm/checkpoints/131072
USAGE
}
if has_option -h "$@" || has_option --help "$@"; then usage; exit 0; fi

REQUIRED="--gin_file --model_dir --initial_checkpoint"
if has_option --status "$@" || has_option --stop "$@"; then REQUIRED="--model_dir"; fi
launch_wrapper "$REQUIRED" --mode train --run_file runs/finetune_t0.gin -- "$@"
