#!/usr/bin/env bash
# Keep a training run (or an evaluator watching one) going on a Spot or preemptible TPU:
# when the TPU is preempted, recreate it, set it up and launch the run again; it resumes
# from its last checkpoint. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT
                    --create_arg ARG [--create_arg ARG ...] --setup_arg ARG [...]
                    [--poll SECONDS] [--max_starts N] [--once] [--dry-run]
                    -- LAUNCHER [LAUNCHER ARG...]

Run this on a machine that stays up (a small VM, a laptop with tmux). Every --poll
seconds it checks the TPU and the run:

  TPU PREEMPTED, TERMINATED, STOPPED or gone   delete it (if it exists), create it again
                     (create_tpu.sh with the --create_arg words), set it up
                     (setup_workers.sh with the --setup_arg words) and start the run
  TPU READY, the run running                   nothing
  TPU READY, the run ended with "stopped_by": null and exit status 0 (evaluate.sh:
                     exit status 0)            the run is finished: exit 0
  TPU READY, the run ended with exit status 2  a configuration error: exit 1 (fix it)
  TPU READY, no run, or the run stopped early (SIGTERM: it saved a checkpoint; or killed)
                                               start the run again (it resumes)
  TPU being created, started or repaired       wait

A preempted run loses at most the steps since its last save: on SIGTERM (the warning a
TPU VM gets before preemption) the trainer finishes its step, saves and exits 0. Stop
this script before stopping the run by hand (launch.sh --stop), or it starts it again.

Required:
  --tpu, --zone, --project   as the other scripts (or ARCH_OBJECTIVE_TPU / _ZONE / _PROJECT)
  --create_arg ARG           one word for create_tpu.sh (repeatable), e.g.
                             --create_arg=--accelerator_type=v4-64 --create_arg=--spot
  -- LAUNCHER ARG...         the run: pretrain.sh, finetune_t0.sh, adapt.sh, evaluate.sh
                             or launch.sh (in tpu_scripts/) and its options, without
                             --tpu, --zone, --project (added before the launcher's own
                             '--', if it has one), e.g. -- pretrain.sh --gin_file
                             experiments/paper/cd_flm.gin --model_dir gs://B/runs/cd_flm;
                             or an evaluator beside that run on its own slice: --
                             evaluate.sh --mode eval_t0 --model_dir gs://B/runs/cd_flm
                             --watch (it exits 0 once the run's last step is evaluated)

Options:
  --setup_arg ARG            one word for setup_workers.sh (repeatable), at least its
                             --package, e.g. --setup_arg=--package=dist/arch_objective-0.1.0-py3-none-any.whl
  --poll SECONDS             time between checks (default: 300)
  --max_starts N             give up after starting the run N times (default: 50)
  --once                     one check and what it calls for, then exit (for cron)
  --dry-run                  print the commands of a check and of a recovery, run nothing
  -h, --help                 this help
EOF
}

CREATE_ARGS=()
SETUP_ARGS=()
POLL=300
MAX_STARTS=50
ONCE=0
LAUNCH=()
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    LAUNCH=("$@")
    break
  fi
  opt_name "$1"
  case $OPTNAME in
    -h | --help) usage; exit 0 ;;
    --create_arg) optarg "$@"; CREATE_ARGS+=("$OPTVAL") ;;
    --setup_arg) optarg "$@"; SETUP_ARGS+=("$OPTVAL") ;;
    --poll) optarg "$@"; POLL=$OPTVAL ;;
    --max_starts) optarg "$@"; MAX_STARTS=$OPTVAL ;;
    --once) no_value "$@"; ONCE=1 ;;
    *) common_option "$@" || usage_error "unknown option: $1 (the launch command goes after '--')" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_target
check_uint "$POLL" --poll
check_uint "$MAX_STARTS" --max_starts
((${#CREATE_ARGS[@]})) || usage_error "missing required option --create_arg (create_tpu.sh needs at least --accelerator_type)"
((${#LAUNCH[@]})) || usage_error "missing the launch command after '--' (e.g. -- pretrain.sh --gin_file FILE --model_dir DIR)"
LAUNCHER=$(basename "${LAUNCH[0]}")
check_choice "$LAUNCHER" "the launch command" pretrain.sh finetune_t0.sh adapt.sh evaluate.sh launch.sh
# The launcher's options, and from its own '--' on the arch-objective arguments it passes
# through: --tpu, --zone, --project, --status and --dry-run go before them.
LAUNCH_OPTS=()
LAUNCH_REST=()
for arg in "${LAUNCH[@]:1}"; do
  if ((${#LAUNCH_REST[@]})) || [[ $arg == -- ]]; then
    LAUNCH_REST+=("$arg")
  else
    LAUNCH_OPTS+=("$arg")
  fi
done
for arg in ${LAUNCH_OPTS[@]+"${LAUNCH_OPTS[@]}"}; do
  case $arg in
    --tpu | --tpu=* | --zone | --zone=* | --project | --project=* | --status | --stop | --dry-run | --dry_run)
      usage_error "the launch command takes no $arg (this script adds --tpu, --zone and --project)" ;;
  esac
done
TARGET=(--tpu="$TPU" --zone="$ZONE" --project="$PROJECT")

# The options of every command a recovery runs are checked now (each script's
# --dry-run), not hours later when the TPU is preempted.
check_dry_run() {  # check_dry_run SCRIPT ARG... [-- ARG...]: --dry-run before the '--'
  local out args=("${@:2}") i=0
  while ((i < ${#args[@]})) && [[ ${args[i]} != -- ]]; do
    i=$((i + 1))
  done
  if ! out=$(bash "$AO_SCRIPTS_DIR/$1" "${args[@]:0:i}" --dry-run "${args[@]:i}" 2>&1); then
    printf '%s\n' "$out" >&2
    usage_error "$1 rejects the options given for it (above)"
  fi
}
check_dry_run create_tpu.sh "${TARGET[@]}" "${CREATE_ARGS[@]}"
check_dry_run setup_workers.sh "${TARGET[@]}" ${SETUP_ARGS[@]+"${SETUP_ARGS[@]}"}
check_dry_run "$LAUNCHER" ${LAUNCH_OPTS[@]+"${LAUNCH_OPTS[@]}"} "${TARGET[@]}" \
  ${LAUNCH_REST[@]+"${LAUNCH_REST[@]}"}

tpu_state() {  # the TPU's state (READY, PREEMPTED, ...), MISSING if it does not exist
  local state
  state=$(gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" --project="$PROJECT" \
    --format='value(state)' 2>/dev/null) || state=MISSING
  printf '%s\n' "${state:-MISSING}"
}

launch_command() {  # launch_command [WORD...]: LAUNCH_CMD, WORDs (--status) before its '--'
  LAUNCH_CMD=(bash "$AO_SCRIPTS_DIR/$LAUNCHER" ${LAUNCH_OPTS[@]+"${LAUNCH_OPTS[@]}"}
    "${TARGET[@]}" "$@" ${LAUNCH_REST[@]+"${LAUNCH_REST[@]}"})
}

start_run() {
  launch_command
  run_or_echo "${LAUNCH_CMD[@]}"
}

recreate() {  # recreate STATE
  if [[ $1 != MISSING ]]; then
    run_or_echo gcloud compute tpus tpu-vm delete "$TPU" --zone="$ZONE" --project="$PROJECT" --quiet
  fi
  run_or_echo bash "$AO_SCRIPTS_DIR/create_tpu.sh" "${TARGET[@]}" "${CREATE_ARGS[@]}"
  run_or_echo bash "$AO_SCRIPTS_DIR/setup_workers.sh" "${TARGET[@]}" ${SETUP_ARGS[@]+"${SETUP_ARGS[@]}"}
  start_run
}

if ((DRY_RUN)); then
  step "each check: the TPU's state"
  printf '%s\n' "$(quote_command gcloud compute tpus tpu-vm describe "$TPU" --zone="$ZONE" --project="$PROJECT" --format='value(state)')"
  step "READY: the run's state"
  launch_command --status
  run_or_echo "${LAUNCH_CMD[@]}"
  step "READY, the run not running and not finished: start it again"
  start_run
  step "PREEMPTED, TERMINATED, STOPPED or gone: recreate the TPU and start the run"
  recreate PREEMPTED
  exit 0
fi

STARTS=0
while :; do
  STATE=$(tpu_state)
  case $STATE in
    READY)
      launch_command --status
      STATUS=$("${LAUNCH_CMD[@]}" 2>&1) || STATUS=""
      if grep -q ': running (pid' <<<"$STATUS"; then
        RESULT=running
      elif grep -q 'exit status 0' <<<"$STATUS" &&
        { [[ $LAUNCHER == evaluate.sh ]] || grep -q '"stopped_by": null' <<<"$STATUS"; }; then
        step "$(date -u +%FT%TZ) TPU $TPU: READY; the run finished"
        exit 0
      elif grep -q 'exit status 2' <<<"$STATUS"; then
        printf '%s\n' "$STATUS" >&2
        die "the run ended with exit status 2 (a configuration error, above); fix it and start again"
      else
        RESULT="started (it resumes from its last checkpoint)"
        STARTS=$((STARTS + 1))
        start_run
      fi
      ;;
    PREEMPTED | TERMINATED | STOPPED | MISSING)
      RESULT="TPU recreated and run started"
      STARTS=$((STARTS + 1))
      recreate "$STATE"
      ;;
    *) RESULT="waiting for the TPU" ;;
  esac
  step "$(date -u +%FT%TZ) TPU $TPU: $STATE; run: $RESULT"
  if ((STARTS > MAX_STARTS)); then
    die "started the run $STARTS times (--max_starts $MAX_STARTS); giving up"
  fi
  ((ONCE)) && exit 0
  sleep "$POLL"
done
