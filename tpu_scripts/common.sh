# shellcheck shell=bash disable=SC2034
# (SC2034: the globals set here are read by the scripts that source this file.)
# Helpers sourced by every script in tpu_scripts/: option parsing, required-value checks,
# shell quoting, and run_or_echo (prints instead of running under --dry-run).
#
# Conventions shared by the scripts:
#   - options are `--name value` or `--name=value`; `--dry-run` and `--dry_run` (any option
#     with - or _) are the same option;
#   - project, zone and TPU name have no defaults: give --project/--zone/--tpu or set
#     ARCH_OBJECTIVE_PROJECT / ARCH_OBJECTIVE_ZONE / ARCH_OBJECTIVE_TPU; a missing one is an
#     error that names it (exit status 2);
#   - under --dry-run every gcloud/srun/ssh/tar command is printed, one per line, as shell
#     text that runs as printed, and nothing is run; comment lines start with '#'.
# Written for bash 3.2 and later (macOS's /bin/bash included).

AO_SCRIPT=$(basename "$0")
AO_LABEL=$AO_SCRIPT${AO_VIA:+ (via $AO_VIA)}   # names the script in error messages
AO_SCRIPTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
AO_REPO=$(cd "$AO_SCRIPTS_DIR/.." && pwd)
# Where setup_workers.sh installs on each worker, relative to the worker's home directory.
AO_REMOTE_ROOT_DEFAULT=arch-objective
# Where setup_workers.sh --gcsfuse_bucket mounts buckets (gs://B -> /gcs/B).
AO_MOUNT_ROOT_DEFAULT=/gcs
DRY_RUN=0
# Never read from same-named environment variables: only the flags and ARCH_OBJECTIVE_*.
PROJECT=""
ZONE=""
TPU=""

# ---------------------------------------------------------------- messages and errors

die() {  # die MESSAGE: a runtime error (exit 1)
  printf '%s: error: %s\n' "$AO_LABEL" "$*" >&2
  exit 1
}

usage_error() {  # usage_error MESSAGE: a bad or missing option (exit 2)
  printf '%s: error: %s\n' "$AO_LABEL" "$*" >&2
  printf "Run '%s --help' for the options.\n" "$AO_SCRIPT" >&2
  exit 2
}

step() {  # step MESSAGE: what comes next (a comment on stdout under --dry-run)
  if ((DRY_RUN)); then
    printf '# %s\n' "$*"
  else
    printf '==> %s\n' "$*" >&2
  fi
}

# ---------------------------------------------------------------- option parsing

# opt_name ARG: sets OPTNAME to the option's name with '_' for '-' (--dry-run -> --dry_run).
opt_name() {
  local name=${1%%=*}
  case $name in
    --?*) name=--$(printf '%s' "${name#--}" | tr '-' '_') ;;
  esac
  OPTNAME=$name
}

# optarg "$@": the value of the option in $1 ("--name=value" or "--name value"); sets OPTVAL
# and OPTSHIFT (how many words to shift). A missing value is a usage error.
optarg() {
  case $1 in
    *=*)
      OPTVAL=${1#*=}
      OPTSHIFT=1
      ;;
    *)
      if (($# < 2)); then
        usage_error "option $1 needs a value"
      fi
      case $2 in
        --*) usage_error "option $1 needs a value (found option $2; write $1=$2 if that is the value)" ;;
      esac
      OPTVAL=$2
      OPTSHIFT=2
      ;;
  esac
}

# no_value "$@": $1 is a flag without a value; rejects --flag=value.
no_value() {
  case $1 in
    *=*) usage_error "option ${1%%=*} takes no value" ;;
  esac
  OPTSHIFT=1
}

# common_option "$@": handles --project, --zone, --tpu, --dry-run; returns 1 for any other.
common_option() {
  opt_name "$1"
  case $OPTNAME in
    --project) optarg "$@"; PROJECT=$OPTVAL ;;
    --zone) optarg "$@"; ZONE=$OPTVAL ;;
    --tpu) optarg "$@"; TPU=$OPTVAL ;;
    --dry_run) no_value "$@"; DRY_RUN=1 ;;
    *) return 1 ;;
  esac
  return 0
}

# require VAR FLAG [ENVVAR]: VAR must be set by FLAG or, failing that, by ENVVAR.
require() {
  local var=$1 flag=$2 env=${3:-}
  if [[ -z ${!var:-} && -n $env && -n ${!env:-} ]]; then
    printf -v "$var" '%s' "${!env}"
  fi
  if [[ -z ${!var:-} ]]; then
    usage_error "missing required option ${flag}${env:+ (or set $env)}"
  fi
}

# require_tpu_target: --project, --zone and --tpu, each from its flag or environment variable.
require_tpu_target() {
  require PROJECT --project ARCH_OBJECTIVE_PROJECT
  require ZONE --zone ARCH_OBJECTIVE_ZONE
  require TPU --tpu ARCH_OBJECTIVE_TPU
  if [[ ! $TPU =~ ^[a-z]([-a-z0-9]*[a-z0-9])?$ ]]; then
    usage_error "--tpu $TPU is not a valid TPU name (lower-case letters, digits and '-', starting with a letter)"
  fi
}

check_choice() {  # check_choice VALUE FLAG CHOICE...
  local value=$1 flag=$2 choice
  shift 2
  for choice in "$@"; do
    [[ $value == "$choice" ]] && return 0
  done
  usage_error "$flag must be one of: $*; found '$value'"
}

check_worker() {  # check_worker VALUE: 'all' or comma-separated worker indices
  if [[ ! $1 =~ ^(all|[0-9]+(,[0-9]+)*)$ ]]; then
    usage_error "--worker must be 'all' or worker indices like 0 or 0,1; found '$1'"
  fi
}

check_uint() {  # check_uint VALUE FLAG
  if [[ ! $1 =~ ^[0-9]+$ ]]; then
    usage_error "$2 expects a non-negative integer; found '$1'"
  fi
}

check_env_binding() {  # check_env_binding KEY=VALUE
  if [[ ! $1 =~ ^[A-Za-z_][A-Za-z0-9_]*= ]]; then
    usage_error "--env expects NAME=VALUE; found '$1'"
  fi
}

# ---------------------------------------------------------------- quoting

# shell_quote WORD: WORD as shell text, as plain as it can be (bare, "double" or 'single').
shell_quote() {
  local s=$1
  if [[ -z $s ]]; then
    printf "''"
  elif [[ $s =~ ^[-A-Za-z0-9_./:=,@%+]+$ ]]; then
    printf '%s' "$s"
  elif [[ $s != *[\"\$\`\\!]* && $s != *$'\n'* ]]; then
    printf '"%s"' "$s"
  else
    printf "'%s'" "${s//\'/\'\\\'\'}"
  fi
}

# heredoc_quote TEXT: multi-line TEXT as "$(cat <<'DELIM' ... DELIM)", printed verbatim.
heredoc_quote() {
  local text=$1 delim=__SCRIPT__ n=0
  while [[ $'\n'$text$'\n' == *$'\n'$delim$'\n'* ]]; do
    n=$((n + 1))
    delim=__SCRIPT${n}__
  done
  # shellcheck disable=SC2016  # the $(...) is text to print, not to expand
  printf '"$(cat <<'\''%s'\''\n%s\n%s\n)"' "$delim" "$text" "$delim"
}

# quote_arg WORD: like shell_quote, but --name=value keeps --name= bare and a multi-line
# value is shown verbatim as a here-document.
quote_arg() {
  local a=$1 key value
  if [[ $a == -*=* && ${a%%=*} =~ ^--?[A-Za-z0-9_.-]+$ ]]; then
    key=${a%%=*}
    value=${a#*=}
    if [[ $value == *$'\n'* ]]; then
      printf '%s=%s' "$key" "$(heredoc_quote "$value")"
    else
      printf '%s=%s' "$key" "$(shell_quote "$value")"
    fi
  elif [[ $a == *$'\n'* ]]; then
    heredoc_quote "$a"
  else
    shell_quote "$a"
  fi
}

# quote_command WORD...: the command as one shell line (here-documents add lines).
quote_command() {
  local out="" a
  for a in "$@"; do
    out+="${out:+ }$(quote_arg "$a")"
  done
  printf '%s' "$out"
}

# run_or_echo CMD ARG...: print the command under --dry-run, else show it on stderr and run it.
run_or_echo() {
  if ((DRY_RUN)); then
    printf '%s\n' "$(quote_command "$@")"
    return 0
  fi
  printf '+ %s\n' "$(quote_command "$@")" >&2
  "$@"
}

# gin_string VALUE: VALUE as a gin string literal ('VALUE').
gin_string() {
  case $1 in
    *\'* | *\\* | *$'\n'*) usage_error "cannot pass '$1' as a gin string (quote, backslash or newline)" ;;
  esac
  printf "'%s'" "$1"
}

# remote_path PATH: PATH as shell text on a worker: relative paths are under $HOME there.
# shellcheck disable=SC2016,SC2088  # "$HOME" and '~' are text for the worker's shell
remote_path() {
  case $1 in
    /*) shell_quote "$1" ;;
    '~') printf '"$HOME"' ;;
    '~/'*) printf '"$HOME"/%s' "$(shell_quote "${1#'~/'}")" ;;
    *) printf '"$HOME"/%s' "$(shell_quote "$1")" ;;
  esac
}

# ---------------------------------------------------------------- gcloud

# ssh_flags are extra words for `gcloud compute tpus tpu-vm ssh/scp` (--ssh_flag=...).
SSH_FLAGS=()

# tpu_ssh WORKER SCRIPT: run SCRIPT (bash text) on WORKER ('all', 0, 0,1, ...).
tpu_ssh() {
  run_or_echo gcloud compute tpus tpu-vm ssh "$TPU" --zone="$ZONE" --project="$PROJECT" \
    --worker="$1" ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"} --command="$2"
}

# tpu_scp WORKER SOURCE DEST [--recurse]: copy a local file or folder to DEST on the workers.
tpu_scp() {
  run_or_echo gcloud compute tpus tpu-vm scp "$2" "$TPU:$3" --zone="$ZONE" \
    --project="$PROJECT" --worker="$1" ${SSH_FLAGS[@]+"${SSH_FLAGS[@]}"} ${4:+"$4"}
}

# ---------------------------------------------------------------- gin files

# gin_resolve FILE: the local path of a gin file as the product finds it (the working
# directory, then the repository's gin/); empty if neither has it.
gin_resolve() {
  if [[ -f $1 ]]; then
    printf '%s' "$1"
  elif [[ -f $AO_REPO/gin/$1 ]]; then
    printf '%s' "$AO_REPO/gin/$1"
  fi
}

# gin_includes FILE: the files FILE includes directly, one per line.
gin_includes() {
  local line re="^[[:space:]]*include[[:space:]]+['\"]([^'\"]+)['\"]"
  while IFS= read -r line || [[ -n $line ]]; do
    if [[ $line =~ $re ]]; then
      printf '%s\n' "${BASH_REMATCH[1]}"
    fi
  done <"$1"
}

# gin_closure NAME...: sets GIN_CLOSURE to NAME and everything it includes (names as
# written); returns 1, with the name in GIN_MISSING, if a file cannot be found locally.
gin_closure() {
  local todo=("$@") seen=$'\n' name path inc
  GIN_CLOSURE=()
  GIN_MISSING=""
  while ((${#todo[@]})); do
    name=${todo[0]}
    todo=("${todo[@]:1}")
    [[ $seen == *$'\n'$name$'\n'* ]] && continue
    seen+=$name$'\n'
    GIN_CLOSURE+=("$name")
    path=$(gin_resolve "$name")
    if [[ -z $path ]]; then
      GIN_MISSING=$name
      return 1
    fi
    while IFS= read -r inc; do
      [[ -n $inc ]] && todo+=("$inc")
    done < <(gin_includes "$path")
  done
  return 0
}

# run_file_of NAME: prints runs/X.gin if NAME is a run file ('runs/X.gin', '.../runs/X.gin').
run_file_of() {
  case $1 in
    runs/*.gin) printf '%s' "$1" ;;
    */runs/*.gin) printf 'runs/%s' "${1##*/runs/}" ;;
  esac
}

# gin_top_run_files NAME...: sets GIN_TOP_RUNS to the run files (runs/*.gin) that NAME...
# include and that no other included run file includes (runs/adapt.gin, not the
# runs/pretrain.gin it builds on). Returns 1 like gin_closure.
gin_top_run_files() {
  local runs=() run other name found
  gin_closure "$@" || return 1
  for name in ${GIN_CLOSURE[@]+"${GIN_CLOSURE[@]}"}; do
    run=$(run_file_of "$name")
    [[ -n $run ]] && runs+=("$run")
  done
  GIN_TOP_RUNS=()
  for run in ${runs[@]+"${runs[@]}"}; do
    found=0
    for other in "${runs[@]}"; do
      [[ $other == "$run" ]] && continue
      gin_closure "$other" || return 1
      for name in "${GIN_CLOSURE[@]:1}"; do
        [[ $(run_file_of "$name") == "$run" ]] && found=1
      done
    done
    if ((!found)) && [[ " ${GIN_TOP_RUNS[*]-} " != *" $run "* ]]; then
      GIN_TOP_RUNS+=("$run")
    fi
  done
  return 0
}

# ---------------------------------------------------------------- wrappers of launch.sh

# has_option NAME ARG...: whether option NAME (as opt_name spells it) is among ARG... before '--'.
has_option() {
  local name=$1 a
  shift
  for a in "$@"; do
    [[ $a == -- ]] && return 1
    opt_name "$a"
    [[ $OPTNAME == "$name" ]] && return 0
  done
  return 1
}

# launch_wrapper "REQUIRED OPTIONS" LAUNCH-ARGS... -- USER-ARGS...: checks that the user's
# arguments have the required options (here, so that the error names this script), then
# runs launch.sh with LAUNCH-ARGS followed by USER-ARGS.
launch_wrapper() {
  local required=$1 fixed=() name
  shift
  while (($#)) && [[ $1 != -- ]]; do
    fixed+=("$1")
    shift
  done
  (($#)) && shift
  for name in $required; do
    has_option "$name" "$@" || usage_error "missing required option $name"
  done
  has_option --mode "$@" && usage_error "$AO_SCRIPT sets --mode itself"
  AO_VIA=$AO_SCRIPT exec "$AO_SCRIPTS_DIR/launch.sh" "${fixed[@]}" "$@"
}
