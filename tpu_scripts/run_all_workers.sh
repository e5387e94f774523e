#!/usr/bin/env bash
# Run one shell command on every worker of a TPU VM or pod slice. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT [options] -- COMMAND [ARG...]

Run COMMAND on the workers at once (gcloud compute tpus tpu-vm ssh --worker=all) and wait
for all of them. One word after '--' is run as shell text on the worker (pipes, globs and
\$VARIABLES work there); several words are quoted and run as one command.

Required (flag or environment variable):
  --tpu NAME                 TPU name                           (ARCH_OBJECTIVE_TPU)
  --zone ZONE                zone                               (ARCH_OBJECTIVE_ZONE)
  --project PROJECT          Google Cloud project               (ARCH_OBJECTIVE_PROJECT)

Options:
  --worker all|N[,N...]      which workers (default: all)
  --ssh_flag ARG             one more word for gcloud ssh, e.g. --ssh_flag=--tunnel-through-iap
                             (repeatable)
  --dry-run                  print the gcloud command, run nothing
  -h, --help                 this help

Examples:
  $AO_SCRIPT --tpu arch-v4-64 --zone us-central2-b --project my-proj -- 'hostname; uptime'
  $AO_SCRIPT ... -- 'tail -n 3 ~/arch-objective/runs/*/worker-*.log'
  $AO_SCRIPT ... --worker 0 -- nvidia-smi
EOF
}

WORKER=all
COMMAND=()
while (($#)); do
  if [[ $1 == -- ]]; then
    shift
    COMMAND=("$@")
    break
  fi
  opt_name "$1"
  case $OPTNAME in
    -h | --help) usage; exit 0 ;;
    --worker) optarg "$@"; WORKER=$OPTVAL ;;
    --ssh_flag) optarg "$@"; SSH_FLAGS+=("$OPTVAL") ;;
    *) common_option "$@" || usage_error "unknown option: $1 (put the command after '--')" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_target
check_worker "$WORKER"
if ((${#COMMAND[@]} == 0)); then
  usage_error "missing the command to run: put it after '--'"
elif ((${#COMMAND[@]} == 1)); then
  SCRIPT=${COMMAND[0]}
else
  SCRIPT=$(quote_command "${COMMAND[@]}")
fi

tpu_ssh "$WORKER" "$SCRIPT"
