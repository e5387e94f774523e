#!/usr/bin/env bash
# Evaluate a run: validation loss (evaluate), T0-Eval (eval_t0) or EAI-Eval (eval_harness).
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<USAGE
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --model_dir DIR
                   --mode evaluate|eval_t0|eval_harness [--gin_file EXPERIMENT]
                   [--watch] [--steps all|N,M,...|every:K] [--poll SECONDS]
                   [--time_limit SECONDS] [launch.sh options] [-- ARG...]

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

Every checkpoint of DIR (eval_t0, eval_harness; arch-objective eval --steps/--watch):
  --steps SPEC         evaluate these checkpoints of DIR: all, N,M,... or every:K (the
                       multiples of K and the run's last step), each into OUT/<step>/,
                       with TensorBoard scalars and curve.json/.md/.png in OUT
                       (OUT: --out, else DIR/<mode>); steps already there are read back
  --watch              the evaluator job beside a training run: evaluate each new
                       checkpoint of DIR as training saves it (all steps, or --steps),
                       exit 0 after the run's last step (TRAIN_STEPS of DIR/config.gin)
                       or after --time_limit seconds without a new checkpoint. A restart
                       scores only the steps not yet in OUT, so supervise.sh can keep it
                       going on a Spot TPU (-- evaluate.sh ... --watch)
  --poll SECONDS       --watch: seconds between looks for a new checkpoint (default 60)
  --time_limit SECONDS --watch: stop after this long without a new checkpoint (default:
                       wait for the last step; give more than a preemption of the
                       training job takes to recover)
With --steps or --watch the results go straight to OUT, a gs:// one included (no copy
at the end: a restarted evaluator finds what the last one wrote).

Every other launch.sh option passes through (launch.sh --help), e.g. --checkpoint
DIR/checkpoints/<step>, --out, --data_dir, --tasks, --worker, --env, --gcsfuse, --dry-run.

Example (T0-Eval of the MT-F model, results in gs://my-bucket/runs/cd_flm_mtf/eval_t0):
  $AO_SCRIPT --tpu arch-v4-8 --zone us-central2-b --project my-proj \\
      --model_dir gs://my-bucket/runs/cd_flm_mtf --mode eval_t0

Example (an evaluator on a v4-8 beside the pod pretraining cd_flm: T0-Eval of every
2,048th checkpoint and the last, as each is saved):
  $AO_SCRIPT --tpu arch-eval-v4-8 --zone us-central2-b --project my-proj \\
      --model_dir gs://my-bucket/runs/cd_flm --mode eval_t0 --watch --steps every:2048 \\
      --time_limit 14400 -- --gin_file experiments/paper/eval_t0.gin
USAGE
}
if has_option -h "$@" || has_option --help "$@"; then usage; exit 0; fi

MODE=""
ARGS=()
SWEEP=()        # arch-objective eval's --watch, --steps, --poll, --time_limit
MODEL_DIR=""
OUT=""
GCSFUSE=0
while (($#)); do
  if [[ $1 == -- ]]; then
    ARGS+=("$@")
    break
  fi
  opt_name "$1"
  case $OPTNAME in
    --mode) optarg "$@"; MODE=$OPTVAL ;;
    --watch) no_value "$@"; SWEEP+=(--watch) ;;
    --steps)
      optarg "$@"
      [[ $OPTVAL =~ ^(all|every:[1-9][0-9]*|[1-9][0-9]*(,[1-9][0-9]*)*)$ ]] ||
        usage_error "--steps expects all, N,M,... (checkpoint steps) or every:K (K >= 1); found '$OPTVAL'"
      SWEEP+=(--steps="$OPTVAL")
      ;;
    --poll | --time_limit)
      optarg "$@"
      [[ $OPTVAL =~ ^[0-9]+([.][0-9]+)?$ && ! $OPTVAL =~ ^0+([.]0+)?$ ]] ||
        usage_error "$OPTNAME expects a positive number of seconds; found '$OPTVAL'"
      SWEEP+=("$OPTNAME=$OPTVAL")
      ;;
    --model_dir | --out)   # read here, passed on to launch.sh
      optarg "$@"
      if [[ $OPTNAME == --out ]]; then OUT=${OPTVAL%/}; else MODEL_DIR=${OPTVAL%/}; fi
      ARGS+=("${@:1:OPTSHIFT}")
      ;;
    --gcsfuse) no_value "$@"; GCSFUSE=1; ARGS+=("$1") ;;
    *) OPTSHIFT=1; ARGS+=("$1") ;;
  esac
  shift "$OPTSHIFT"
done
require MODE --mode
check_choice "$MODE" --mode evaluate eval_t0 eval_harness
if ((${#SWEEP[@]})); then
  [[ $MODE != evaluate ]] ||
    usage_error "--watch, --steps, --poll and --time_limit are for --mode eval_t0 or eval_harness, not evaluate"
  # launch.sh writes a gs:// --out on the worker and copies it at the end; a sweep writes
  # each step to the bucket itself, so that a restarted evaluator reads them back.
  SWEEP_OUT=${OUT:-$MODEL_DIR/$MODE}
  if [[ -n $MODEL_DIR && $SWEEP_OUT == gs://* ]] && ((!GCSFUSE)); then
    SWEEP+=(--out="$SWEEP_OUT")
  fi
  SEPARATED=0    # whether ARGS holds the '--' before arch-objective's own arguments
  for arg in ${ARGS[@]+"${ARGS[@]}"}; do
    [[ $arg == -- ]] && SEPARATED=1
  done
  ((SEPARATED)) || ARGS+=(--)
  ARGS+=("${SWEEP[@]}")
fi
REQUIRED="--model_dir"
RUN_FILE=()
if [[ $MODE == evaluate ]]; then
  RUN_FILE=(--run_file runs/evaluate.gin)
  if ! has_option --status ${ARGS[@]+"${ARGS[@]}"} && ! has_option --stop ${ARGS[@]+"${ARGS[@]}"}; then
    REQUIRED="--model_dir --gin_file"
  fi
fi
launch_wrapper "$REQUIRED" --mode "$MODE" ${RUN_FILE[@]+"${RUN_FILE[@]}"} -- ${ARGS[@]+"${ARGS[@]}"}
