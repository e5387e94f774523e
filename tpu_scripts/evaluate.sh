#!/usr/bin/env bash
# Evaluate a run: validation loss (evaluate), T0-Eval (eval_t0) or EAI-Eval (eval_harness).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --model_dir DIR
                   --mode evaluate|eval_t0|eval_harness [--gin_file EXPERIMENT]
                   [launch.sh options] [-- ARG...]

  --mode evaluate      loss and token accuracy of the latest checkpoint of DIR on the
                       validation split: launch.sh --mode evaluate --run_file
                       runs/evaluate.gin (all workers). Needs --gin_file: the run's
                       models/, sizes/ and objectives/ files or its experiment
                       (runs/evaluate.gin is added after it; bind TRAIN_STEPS with --gin if
                       the experiment leaves it required). Writes DIR/eval/.
  --mode eval_t0       T0-Eval, 11 datasets, median over prompts (spec §4.1): launch.sh
                       --mode eval_t0 (worker 0). Results in DIR/eval_t0 unless --out.
  --mode eval_harness  EAI-Eval through lm-evaluation-harness (spec §4.2): launch.sh
                       --mode eval_harness, tasks eai_eval (worker 0). The paper's
                       truncation: add -- --truncation paper. Needs setup_workers.sh
                       --with_eval.

Required:
  --tpu, --zone, --project   as launch.sh (or ARCH_OBJECTIVE_TPU / _ZONE / _PROJECT)
  --model_dir DIR            the run to evaluate, e.g. gs://BUCKET/runs/cd_flm_mtf
  --mode MODE                evaluate, eval_t0 or eval_harness

Every other launch.sh option passes through (launch.sh --help), e.g. --checkpoint
DIR/checkpoints/<step>, --out, --data_dir, --tasks, --worker, --env, --gcsfuse, --dry-run.

Example (T0-Eval of the MT-F model, results in gs://my-bucket/runs/cd_flm_mtf/eval_t0):
  $AO_SCRIPT --tpu arch-v4-8 --zone us-central2-b --project my-proj \\
      --model_dir gs://my-bucket/runs/cd_flm_mtf --mode eval_t0
USAGE
}
if has_option -h "$@" || has_option --help "$@"; then usage; exit 0; fi

MODE=""
ARGS=()
while (($#)); do
  if [[ $1 == -- ]]; then
    ARGS+=("$@")
    break
  fi
  opt_name "$1"
  if [[ $OPTNAME == --mode ]]; then
    optarg "$@"
    MODE=$OPTVAL
    shift "$OPTSHIFT"
  else
    ARGS+=("$1")
    shift
  fi
done
require MODE --mode
check_choice "$MODE" --mode evaluate eval_t0 eval_harness
REQUIRED="--model_dir"
RUN_FILE=()
if [[ $MODE == evaluate ]]; then
  RUN_FILE=(--run_file runs/evaluate.gin)
  if ! has_option --status ${ARGS[@]+"${ARGS[@]}"} && ! has_option --stop ${ARGS[@]+"${ARGS[@]}"}; then
    REQUIRED="--model_dir --gin_file"
  fi
fi
launch_wrapper "$REQUIRED" --mode "$MODE" ${RUN_FILE[@]+"${RUN_FILE[@]}"} -- ${ARGS[@]+"${ARGS[@]}"}
