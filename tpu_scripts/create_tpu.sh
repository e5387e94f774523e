#!/usr/bin/env bash
# Create a Cloud TPU VM or pod slice. See --help.
set -euo pipefail
# shellcheck source-path=SCRIPTDIR source=common.sh
source "$(dirname "${BASH_SOURCE[0]}")/common.sh"

usage() {
  cat <<EOF
Usage: $AO_SCRIPT --tpu NAME --zone ZONE --project PROJECT --accelerator_type TYPE [options]

Create a TPU VM (one host, e.g. v4-8) or a pod slice (several hosts, e.g. v4-64) with
'gcloud compute tpus tpu-vm create'.

Required (flag or environment variable):
  --tpu NAME                 TPU name                           (ARCH_OBJECTIVE_TPU)
  --zone ZONE                zone with TPU quota, e.g. us-central2-b for v4
                                                                (ARCH_OBJECTIVE_ZONE)
  --project PROJECT          Google Cloud project               (ARCH_OBJECTIVE_PROJECT)
  --accelerator_type TYPE    e.g. v4-8 (4 chips, 1 host), v4-64 (32 chips, 8 hosts),
                             v4-128 (64 chips, 16 hosts); the number counts TensorCores,
                             two per v4 chip

Options:
  --version VERSION          TPU software version; by default tpu-ubuntu2204-base for
                             v2/v3/v4, v2-alpha-tpuv5-lite for v5litepod, v2-alpha-tpuv5 for
                             v5p, v2-alpha-tpuv6e for v6e (required for other types)
  --spot                     a Spot TPU (cheaper, can be preempted at any time)
  --preemptible              a preemptible TPU (older form of --spot)
  --reserved                 use reserved capacity
  --network NETWORK          VPC network
  --subnetwork SUBNETWORK    subnetwork
  --internal_ips             no external IP addresses (then ssh with
                             --ssh_flag=--tunnel-through-iap or from inside the VPC)
  --service_account EMAIL    service account of the VMs (needs read/write on the bucket)
  --labels KEY=VALUE,...     labels
  --extra ARG                one more word for gcloud, e.g. --extra=--metadata=k=v (repeatable)
  --dry-run                  print the gcloud command, run nothing
  -h, --help                 this help

Example:
  $AO_SCRIPT --tpu arch-v4-64 --zone us-central2-b --project my-proj \\
      --accelerator_type v4-64 --spot
Delete it when done:
  gcloud compute tpus tpu-vm delete NAME --zone=ZONE --project=PROJECT
EOF
}

ACCELERATOR_TYPE=""
VERSION=""
CAPACITY=()
NETWORK_FLAGS=()
EXTRA=()
while (($#)); do
  opt_name "$1"
  case $OPTNAME in
    -h | --help) usage; exit 0 ;;
    --accelerator_type) optarg "$@"; ACCELERATOR_TYPE=$OPTVAL ;;
    --version) optarg "$@"; VERSION=$OPTVAL ;;
    --spot) no_value "$@"; CAPACITY+=(--spot) ;;
    --preemptible) no_value "$@"; CAPACITY+=(--preemptible) ;;
    --reserved) no_value "$@"; CAPACITY+=(--reserved) ;;
    --network) optarg "$@"; NETWORK_FLAGS+=(--network="$OPTVAL") ;;
    --subnetwork) optarg "$@"; NETWORK_FLAGS+=(--subnetwork="$OPTVAL") ;;
    --internal_ips) no_value "$@"; NETWORK_FLAGS+=(--internal-ips) ;;
    --service_account) optarg "$@"; NETWORK_FLAGS+=(--service-account="$OPTVAL") ;;
    --labels) optarg "$@"; EXTRA+=(--labels="$OPTVAL") ;;
    --extra) optarg "$@"; EXTRA+=("$OPTVAL") ;;
    *) common_option "$@" || usage_error "unknown option: $1" ;;
  esac
  shift "$OPTSHIFT"
done

require_tpu_target
require ACCELERATOR_TYPE --accelerator_type
if [[ ! $ACCELERATOR_TYPE =~ ^v[0-9a-z]+-[0-9]+$ ]]; then
  usage_error "--accelerator_type expects a type like v4-64; found '$ACCELERATOR_TYPE'"
fi
if ((${#CAPACITY[@]} > 1)); then
  usage_error "choose at most one of --spot, --preemptible, --reserved"
fi
if [[ -z $VERSION ]]; then
  case $ACCELERATOR_TYPE in
    v2-* | v3-* | v4-*) VERSION=tpu-ubuntu2204-base ;;
    v5litepod-*) VERSION=v2-alpha-tpuv5-lite ;;
    v5p-*) VERSION=v2-alpha-tpuv5 ;;
    v6e-*) VERSION=v2-alpha-tpuv6e ;;
    *) usage_error "no default software version for $ACCELERATOR_TYPE: give --version" ;;
  esac
fi

step "create TPU $TPU ($ACCELERATOR_TYPE, $VERSION) in $ZONE"
run_or_echo gcloud compute tpus tpu-vm create "$TPU" --zone="$ZONE" --project="$PROJECT" \
  --accelerator-type="$ACCELERATOR_TYPE" --version="$VERSION" \
  ${CAPACITY[@]+"${CAPACITY[@]}"} ${NETWORK_FLAGS[@]+"${NETWORK_FLAGS[@]}"} \
  ${EXTRA[@]+"${EXTRA[@]}"}
