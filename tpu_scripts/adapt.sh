#!/usr/bin/env bash
# Adaptation (LM-A, NC-A): continue pretraining a checkpoint with another mask/objective.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --gin_file EXPERIMENT
                   --model_dir DIR --initial_checkpoint CKPT [--train_steps N]
                   [launch.sh options] [-- ARG...]

Adaptation (spec §5): launch.sh --mode train --run_file runs/adapt.gin, binding MODEL_DIR,
INITIAL_CHECKPOINT_PATH (and TRAIN_STEPS with --train_steps). EXPERIMENT is an adaptation gin file, e.g.
experiments/paper/nc_a.gin (NC-A: a CD:FLM checkpoint continued as a non-causal decoder
with span corruption), or models/, sizes/ and objectives/ files naming the new
architecture and objective, to which runs/adapt.gin is added. The step counter, optimiser
state and schedule continue from CKPT, so TRAIN_STEPS counts the restored steps.

Required:
  --tpu, --zone, --project   as launch.sh (or ARCH_OBJECTIVE_TPU / _ZONE / _PROJECT)
  --gin_file EXPERIMENT      the experiment (repeatable)
  --model_dir DIR            where the adapted model goes, e.g. gs://BUCKET/runs/nc_a
  --initial_checkpoint CKPT  the source MODEL_DIR or MODEL_DIR/checkpoints/<step>,
                             e.g. gs://BUCKET/runs/cd_flm/checkpoints/131072
  --train_steps N            unless the gin files set TRAIN_STEPS (the paper's experiments
                             do); NC-A in the paper: 171008 = 131072 + 39936 (51B tokens)

Every other launch.sh option passes through (launch.sh --help), e.g. --tfds_data_dir,
--gin RESET_STEP=True, --gcsfuse, --env, --status, --stop, --dry-run.
USAGE
}
if has_option -h "$@" || has_option --help "$@"; then usage; exit 0; fi

REQUIRED="--gin_file --model_dir --initial_checkpoint"
if has_option --status "$@" || has_option --stop "$@"; then REQUIRED="--model_dir"; fi
launch_wrapper "$REQUIRED" --mode train --run_file runs/adapt.gin -- "$@"
