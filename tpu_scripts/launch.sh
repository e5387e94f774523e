#!/usr/bin/env bash
# Launch an arch-objective run on the workers of a TPU VM or pod slice. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --model_dir DIR
                 [--mode train|evaluate|eval_t0|eval_harness] [--gin_file FILE ...]
                 [--gin NAME=VALUE ...] [options] [-- ARG...]

Start a run detached on the workers (nohup + setsid: closing ssh does not stop it); each
worker logs to ~/<remote_dir>/runs/<run_name>/worker-<N>.log and, when MODEL_DIR is on
GCS, copies that log to MODEL_DIR/logs/ when the run ends. --status and --stop act on it.

Modes and the command each worker runs:
  train         arch-objective train --gin_file=... --gin.MODEL_DIR='DIR' ...   (all workers;
                jax.distributed joins the slice's hosts by itself)
  evaluate      arch-objective evaluate --gin_file=... --gin.MODEL_DIR='DIR' ... (all workers)
  eval_t0       arch-objective eval t0 --checkpoint=CKPT --out=OUT ...           (worker 0)
  eval_harness  arch-objective eval harness --checkpoint=CKPT --tasks=TASKS --out=OUT (worker 0)

Required (flag or environment variable):
  --tpu NAME                 TPU name                           (ARCH_OBJECTIVE_TPU)
  --zone ZONE                zone                               (ARCH_OBJECTIVE_ZONE)
  --project PROJECT          Google Cloud project               (ARCH_OBJECTIVE_PROJECT)
  --model_dir DIR            the run's folder, e.g. gs://BUCKET/runs/cd_flm (MODEL_DIR)
  --gin_file FILE            train/evaluate: a gin file, e.g. experiments/paper/cd_flm.gin
                             (repeatable; searched in the package's gin/ on the workers)

Options:
  --mode MODE                train (default), evaluate, eval_t0, eval_harness
  --gin NAME=VALUE           a gin binding, passed as --gin.NAME=VALUE; strings in gin
                             quotes: --gin "C4_VERSION='2.2.0'" (repeatable)
  --train_steps N            --gin.TRAIN_STEPS=N (total steps, counting restored ones);
                             train: required unless the gin files set TRAIN_STEPS
  --initial_checkpoint PATH  --gin.INITIAL_CHECKPOINT_PATH='PATH' (finetune, adapt)
  --tfds_data_dir DIR        --gin.TFDS_DATA_DIR='DIR' (where c4/en is prepared)
  --vocabulary PATH          train/evaluate: --gin.VOCABULARY='PATH'; eval_*: --vocabulary
  --run_file FILE|none       add FILE (e.g. runs/pretrain.gin) to the gin files unless they
                             include it already; an experiment of another run type is an
                             error (the wrappers pretrain.sh etc. set this)
  --checkpoint PATH          eval_*: a model folder (latest step) or DIR/checkpoints/<step>
                             (default: --model_dir)
  --out DIR                  eval_*: results folder (default: MODEL_DIR/<mode>); a gs:// one
                             is written on the worker, then copied with gcloud storage rsync
  --data_dir DIR             eval_t0: original dataset files (default: HF datasets)
  --tasks TASKS              eval_harness: lm-eval tasks, comma separated (default: eai_eval,
                             the paper's 31)
  --gcsfuse                  optional (arch-objective reads and writes gs:// itself): pass
                             gs://BUCKET/PATH in --model_dir, --initial_checkpoint,
                             --checkpoint and --out as $AO_MOUNT_ROOT_DEFAULT/BUCKET/PATH, the
                             mount made by setup_workers.sh --gcsfuse_bucket BUCKET
  --worker all|N[,N...]      which workers (default: all for train/evaluate, 0 for eval_*)
  --env NAME=VALUE           environment variable for the run (repeatable)
  --run_name NAME            names the log folder (default: <basename of DIR>-<mode>)
  --remote_dir DIR           install folder of setup_workers.sh (default: $AO_REMOTE_ROOT_DEFAULT)
  --status                   show whether the run is alive and its last log lines
  --stop                     stop the run (SIGTERM to its process group on each worker)
  --ssh_flag ARG             one more word for gcloud ssh (repeatable)
  --dry-run                  print the gcloud command (with the script each worker runs),
                             run nothing
  -h, --help                 this help
  -- ARG...                  more arguments for the arch-objective command

Example (the paper's CD:FLM pretraining; pretrain.sh does the same):
  $AO_SCRIPT --tpu arch-v4-64 --zone us-central2-b --project my-proj \\
      --gin_file experiments/paper/cd_flm.gin --model_dir gs://my-bucket/runs/cd_flm \\
      --train_steps 131072 --tfds_data_dir gs://my-bucket/tensorflow_datasets
EOF
}

MODE=train
MODEL_DIR=""
GIN_FILES=()
GIN_BINDINGS=()
TRAIN_STEPS=""
INITIAL_CHECKPOINT=""
TFDS_DATA_DIR=""
VOCABULARY=""
RUN_FILE=""
CHECKPOINT=""
OUT=""
DATA_DIR=""
TASKS=""
GCSFUSE=0
WORKER=""
ENVS=()
RUN_NAME=""
REMOTE_DIR=$AO_REMOTE_ROOT_DEFAULT
ACTION=start
EXTRA_ARGS=()
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    EXTRA_ARGS=("$@")
    break
  fi
  opt_name "$1"
  case $OPTNAME in
    -h | --help) usage; exit 0 ;;
    --mode) optarg "$@"; MODE=$OPTVAL ;;
    --model_dir) optarg "$@"; MODEL_DIR=${OPTVAL%/} ;;
    --gin_file) optarg "$@"; GIN_FILES+=("$OPTVAL") ;;
    --gin) optarg "$@"; GIN_BINDINGS+=("$OPTVAL") ;;
    --train_steps) optarg "$@"; TRAIN_STEPS=$OPTVAL ;;
    --initial_checkpoint) optarg "$@"; INITIAL_CHECKPOINT=${OPTVAL%/} ;;
    --tfds_data_dir) optarg "$@"; TFDS_DATA_DIR=$OPTVAL ;;
    --vocabulary) optarg "$@"; VOCABULARY=$OPTVAL ;;
    --run_file) optarg "$@"; RUN_FILE=$OPTVAL ;;
    --checkpoint) optarg "$@"; CHECKPOINT=${OPTVAL%/} ;;
    --out) optarg "$@"; OUT=${OPTVAL%/} ;;
    --data_dir) optarg "$@"; DATA_DIR=$OPTVAL ;;
    --tasks) optarg "$@"; TASKS=$OPTVAL ;;
    --gcsfuse) no_value "$@"; GCSFUSE=1 ;;
    --worker) optarg "$@"; WORKER=$OPTVAL ;;
    --env) optarg "$@"; check_env_binding "$OPTVAL"; ENVS+=("$OPTVAL") ;;
    --run_name) optarg "$@"; RUN_NAME=$OPTVAL ;;
    --remote_dir) optarg "$@"; REMOTE_DIR=${OPTVAL%/} ;;
    --status) no_value "$@"; ACTION=status ;;
    --stop) no_value "$@"; ACTION=stop ;;
    --ssh_flag) optarg "$@"; SSH_FLAGS+=("$OPTVAL") ;;
    *) common_option "$@" || usage_error "unknown option: $1 (arguments for arch-objective go after '--')" ;;
  esac
  shift "$OPTSHIFT"
done

# ---------------------------------------------------------------- checks

require_tpu_target
check_choice "$MODE" --mode train evaluate eval_t0 eval_harness
require MODEL_DIR --model_dir
case $MODE in
  train | evaluate) GIN_MODE=1 ;;
  *) GIN_MODE=0 ;;
esac
WORKER=${WORKER:-$( ((GIN_MODE)) && echo all || echo 0)}
check_worker "$WORKER"
RUN_NAME=${RUN_NAME:-$(basename "$MODEL_DIR")-$MODE}
if [[ ! $RUN_NAME =~ ^[A-Za-z0-9][A-Za-z0-9_.-]*$ ]]; then
  usage_error "--run_name must be letters, digits, '_', '.' or '-'; found '$RUN_NAME'"
fi

only_for() {  # only_for MODES FLAG VALUE: FLAG (given when VALUE is set) needs one of MODES
  if [[ -n $3 && " $1 " != *" $MODE "* ]]; then
    usage_error "$2 is for --mode ${1// / or }, not $MODE"
  fi
}
if [[ $ACTION == start ]]; then
  if ((GIN_MODE)); then
    ((${#GIN_FILES[@]})) || usage_error "missing required option --gin_file (for --mode $MODE)"
  else
    ((${#GIN_FILES[@]} == 0)) || usage_error "--gin_file is for --mode train or evaluate, not $MODE"
    ((${#GIN_BINDINGS[@]} == 0)) || usage_error "--gin is for --mode train or evaluate, not $MODE"
  fi
  only_for "train evaluate" --train_steps "$TRAIN_STEPS"
  only_for "train" --initial_checkpoint "$INITIAL_CHECKPOINT"
  only_for "train evaluate" --tfds_data_dir "$TFDS_DATA_DIR"
  only_for "train evaluate" --run_file "$RUN_FILE"
  only_for "eval_t0 eval_harness" --checkpoint "$CHECKPOINT"
  only_for "eval_t0 eval_harness" --out "$OUT"
  only_for "eval_t0" --data_dir "$DATA_DIR"
  only_for "eval_harness" --tasks "$TASKS"
  [[ -z $TRAIN_STEPS ]] || check_uint "$TRAIN_STEPS" --train_steps
  for binding in ${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"}; do
    if [[ ! $binding =~ ^[A-Za-z_][A-Za-z0-9_./]*=. ]]; then
      usage_error "--gin expects NAME=VALUE (e.g. --gin BATCH_SIZE=1024); found '$binding'"
    fi
  done
fi

# ---------------------------------------------------------------- the run file

# Add the run file (runs/pretrain.gin, ...) unless the gin files include it; refuse an
# experiment of another run type (e.g. an MT-F experiment given to pretrain.sh).
if [[ $ACTION == start && -n $RUN_FILE && $RUN_FILE != none ]]; then
  if ! gin_top_run_files "${GIN_FILES[@]}"; then
    usage_error "cannot read gin file $GIN_MISSING here (looked in the working directory and $AO_REPO/gin) to tell whether it includes $RUN_FILE: give --run_file none if it does, or run from the folder that has it"
  fi
  case " ${GIN_TOP_RUNS[*]-} " in
    "  ") GIN_FILES+=("$RUN_FILE") ;;
    " $RUN_FILE ") ;;
    *)
      if [[ $RUN_FILE == runs/evaluate.gin ]]; then
        GIN_FILES+=("$RUN_FILE")   # evaluating a training experiment: evaluate.gin last
      else
        other=${GIN_TOP_RUNS[0]}
        case $other in
          runs/pretrain.gin) script=pretrain.sh ;;
          runs/adapt.gin) script=adapt.sh ;;
          runs/finetune_t0.gin) script=finetune_t0.sh ;;
          runs/evaluate.gin) script=evaluate.sh ;;
          *) script="--run_file $other" ;;
        esac
        usage_error "${GIN_FILES[*]} is a $other run, not a $RUN_FILE one: use $script"
      fi
      ;;
  esac
fi

# A training run needs TRAIN_STEPS: from --train_steps, a --gin binding or the gin files.
if [[ $ACTION == start && $MODE == train && -z $TRAIN_STEPS ]] &&
  [[ " ${GIN_BINDINGS[*]-} " != *" TRAIN_STEPS="* ]] && gin_closure "${GIN_FILES[@]}"; then
  steps_set=0
  for name in "${GIN_CLOSURE[@]}"; do
    if grep -Eq '^[[:space:]]*TRAIN_STEPS[[:space:]]*=[[:space:]]*[0-9]' "$(gin_resolve "$name")"; then
      steps_set=1
    fi
  done
  ((steps_set)) || usage_error "missing required option --train_steps (the gin files do not set TRAIN_STEPS)"
fi

# ---------------------------------------------------------------- paths

# on_worker PATH: the path arch-objective is given (gs:// -> the gcsfuse mount with --gcsfuse).
on_worker() {
  if ((GCSFUSE)) && [[ $1 == gs://* ]]; then
    printf '%s/%s' "$AO_MOUNT_ROOT_DEFAULT" "${1#gs://}"
  else
    printf '%s' "$1"
  fi
}
MODEL_PATH=$(on_worker "$MODEL_DIR")
ROOT=$(remote_path "$REMOTE_DIR")
RUN_DIR="$ROOT/runs/$(shell_quote "$RUN_NAME")"
if [[ $ACTION == start ]] && ((!GCSFUSE)); then
  for path in "$MODEL_DIR" "$INITIAL_CHECKPOINT" "$CHECKPOINT"; do
    if [[ $path == gs://* ]]; then
      step "note: gs:// paths go to arch-objective as they are; it reads and writes them itself with the workers' service account (--gcsfuse hands it a gcsfuse mount instead)"
      break
    fi
  done
fi

# ---------------------------------------------------------------- status and stop

if [[ $ACTION == status ]]; then
  tpu_ssh "$WORKER" "run_dir=$RUN_DIR
for pid_file in \"\$run_dir\"/worker-*.pid; do
  [ -f \"\$pid_file\" ] || { echo \"\$(hostname): no run in \$run_dir\"; continue; }
  pid=\$(cat \"\$pid_file\")
  exit_file=\${pid_file%.pid}.exit
  if [ -f \"\$exit_file\" ]; then state=\"ended, exit status \$(cat \"\$exit_file\")\"
  elif kill -0 \"\$pid\" 2>/dev/null; then state=running
  else state=\"ended without an exit status (killed?)\"; fi
  log=\${pid_file%.pid}.log
  echo \"== \$(hostname) \$log: \$state (pid \$pid)\"
  tail -n 5 \"\$log\"
done"
  exit 0
fi
if [[ $ACTION == stop ]]; then
  tpu_ssh "$WORKER" "run_dir=$RUN_DIR
for pid_file in \"\$run_dir\"/worker-*.pid; do
  [ -f \"\$pid_file\" ] || continue
  pid=\$(cat \"\$pid_file\")
  if [ ! -f \"\${pid_file%.pid}.exit\" ] && kill -0 \"\$pid\" 2>/dev/null; then
    kill -TERM -- \"-\$pid\" && echo \"\$(hostname): stopped pid \$pid (\$pid_file)\"
  else
    echo \"\$(hostname): pid \$pid (\$pid_file) has already ended\"
  fi
done"
  exit 0
fi

# ---------------------------------------------------------------- the command

CMD=(arch-objective)
OUT_TEXT=""     # shell text for --out (eval modes)
OUT_SYNC=""     # gs:// destination of a results folder written on the worker
case $MODE in
  train | evaluate)
    CMD+=("$MODE")
    for f in "${GIN_FILES[@]}"; do
      CMD+=(--gin_file="$f")
    done
    CMD+=(--gin.MODEL_DIR="$(gin_string "$MODEL_PATH")")
    [[ -z $TRAIN_STEPS ]] || CMD+=(--gin.TRAIN_STEPS="$TRAIN_STEPS")
    [[ -z $INITIAL_CHECKPOINT ]] ||
      CMD+=(--gin.INITIAL_CHECKPOINT_PATH="$(gin_string "$(on_worker "$INITIAL_CHECKPOINT")")")
    [[ -z $TFDS_DATA_DIR ]] || CMD+=(--gin.TFDS_DATA_DIR="$(gin_string "$TFDS_DATA_DIR")")
    [[ -z $VOCABULARY ]] || CMD+=(--gin.VOCABULARY="$(gin_string "$VOCABULARY")")
    for binding in ${GIN_BINDINGS[@]+"${GIN_BINDINGS[@]}"}; do
      CMD+=(--gin."$binding")
    done
    ;;
  eval_t0 | eval_harness)
    CMD+=(eval "${MODE#eval_}" --checkpoint="$(on_worker "${CHECKPOINT:-$MODEL_DIR}")")
    [[ $MODE == eval_harness ]] && CMD+=(--tasks="${TASKS:-eai_eval}")
    [[ -z $DATA_DIR ]] || CMD+=(--data_dir="$DATA_DIR")
    [[ -z $VOCABULARY ]] || CMD+=(--vocabulary="$VOCABULARY")
    OUT=$(on_worker "${OUT:-$MODEL_DIR/$MODE}")
    if [[ $OUT == gs://* ]]; then
      OUT_SYNC=$OUT
      # shellcheck disable=SC2016  # expanded by the job on the worker
      OUT_TEXT=' --out="$run_dir/out"'
    else
      CMD+=(--out="$OUT")
    fi
    ;;
esac
CMD_TEXT="$(quote_command "${CMD[@]}")$OUT_TEXT"
((${#EXTRA_ARGS[@]} == 0)) || CMD_TEXT+=" $(quote_command "${EXTRA_ARGS[@]}")"

# ---------------------------------------------------------------- the job each worker runs

ENV_TEXT=""
for kv in ${ENVS[@]+"${ENVS[@]}"}; do
  ENV_TEXT+="export ${kv%%=*}=$(shell_quote "${kv#*=}")"$'\n'
done
AFTER=""
if [[ -n $OUT_SYNC ]]; then
  AFTER+="if [ \"\$status\" -eq 0 ]; then
  gcloud storage rsync --recursive \"\$run_dir/out\" $(shell_quote "$OUT_SYNC") || status=1
fi
"
fi
if [[ $MODEL_DIR == gs://* ]]; then
  AFTER+="log=\${pid_file%.pid}.log
gcloud storage cp --quiet \"\$log\" $(shell_quote "$MODEL_DIR/logs/$RUN_NAME")-worker-\"\$worker\".log ||
  echo \"could not copy \$log to $(shell_quote "$MODEL_DIR/logs/")\"
"
fi
PREPARE=""
if [[ -n $OUT_SYNC ]]; then
  # shellcheck disable=SC2016  # expanded by the job on the worker
  PREPARE="run_dir=$RUN_DIR"$'\n''rm -rf "$run_dir/out" && mkdir -p "$run_dir/out"'$'\n'
fi
JOB="# written by launch.sh: $MODE run $RUN_NAME; arguments: worker, pid file (next to it:
# the log, .log, and at the end the exit status, .exit)
set -uo pipefail
worker=\$1 pid_file=\$2
echo \$\$ > \"\$pid_file\"
export PYTHONUNBUFFERED=1
${ENV_TEXT}# shellcheck disable=SC1091
source $ROOT/venv/bin/activate
cd \"\$HOME\" || exit 1
${PREPARE}echo \"[\$(date -u +%FT%TZ)] worker \$worker: start\"
$CMD_TEXT
status=\$?
echo \"[\$(date -u +%FT%TZ)] worker \$worker: exit status \$status\"
${AFTER}echo \"\$status\" > \"\${pid_file%.pid}.exit\"
exit \"\$status\""

# The worker number from the TPU VM metadata server (the host name if there is none).
START="set -euo pipefail
run_dir=$RUN_DIR
worker=\$(curl -sf -H 'Metadata-Flavor: Google' http://metadata.google.internal/computeMetadata/v1/instance/attributes/agent-worker-number || hostname)
mkdir -p \"\$run_dir\"
log=\"\$run_dir/worker-\$worker.log\"
pid_file=\"\$run_dir/worker-\$worker.pid\"
if [ -f \"\$pid_file\" ] && [ ! -f \"\$run_dir/worker-\$worker.exit\" ] &&
  kill -0 \"\$(cat \"\$pid_file\")\" 2>/dev/null; then
  echo \"worker \$worker: \$run_dir is still running (pid \$(cat \"\$pid_file\")); stop it first with --stop\" >&2
  exit 1
fi
rm -f \"\$run_dir/worker-\$worker.exit\"
cat > \"\$run_dir/job.sh\" <<'__JOB__'
$JOB
__JOB__
nohup setsid bash \"\$run_dir/job.sh\" \"\$worker\" \"\$pid_file\" > \"\$log\" 2>&1 < /dev/null &
echo \"worker \$worker: started; log \$log\""

if [[ $JOB == *$'\n'__JOB__$'\n'* ]]; then
  die "the job text contains the line __JOB__; rename what produced it"
fi
step "start $MODE run $RUN_NAME on worker(s) $WORKER of $TPU"
tpu_ssh "$WORKER" "$START"
