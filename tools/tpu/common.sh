# Shared by the tools/tpu scripts (sourced, not run). Every gcloud call goes through `run`,
# which prints it first as a copy-pasteable line ("+ gcloud ...") and executes it unless
# --dry-run was given, so a dry run shows exactly the commands a real run would type.

DRY_RUN=0
NAME="" ZONE="" PROJECT=""

# One shell word per argument: as is when safe, in single quotes otherwise.
quote_args() {
  local arg out=()
  for arg in "$@"; do
    if [[ "$arg" =~ ^[A-Za-z0-9_./:=@,+%-]+$ ]]; then out+=("$arg"); else out+=("${arg@Q}"); fi
  done
  echo "${out[*]}"
}

# Shell lines as one line ("a; b; c"), so that every command prints on one copy-pasteable line.
join_lines() {
  local IFS=';'
  local joined="$*"
  echo "${joined//;/; }"
}

run() {
  echo "+ $(quote_args "$@")"
  if [[ "$DRY_RUN" == 1 ]]; then return 0; fi
  "$@"
}

die() {
  echo "$(basename "$0"): $*" >&2
  exit 2
}

need_name_zone() {
  [[ -n "$NAME" ]] || die "--name is required (the TPU VM's name)"
  [[ -n "$ZONE" ]] || die "--zone is required (e.g. us-east5-a for v5p, us-east1-d for v6e)"
}

# gcloud compute tpus tpu-vm SUBCOMMAND ... with the zone and (optional) project appended.
tpu_vm() {
  local args=(gcloud compute tpus tpu-vm "$@" --zone "$ZONE")
  if [[ -n "$PROJECT" ]]; then args+=(--project "$PROJECT"); fi
  run "${args[@]}"
}

# Errors that mean "try again later", not "fix something": no capacity or quota in the zone.
CAPACITY_RE='no more capacity|stockout|resource_exhausted|resources? (are|is) (currently )?(un)?available|insufficient capacity|quota exceeded|zone_resource_pool_exhausted|there is no capacity'
EX_CAPACITY=75  # create.sh gave up waiting for capacity (EX_TEMPFAIL)

is_capacity_error() {
  printf '%s' "$1" | grep -qiE "$CAPACITY_RE"
}

# The runtime image that matches an accelerator type.
default_version() {
  case "$1" in
    v6e-*) echo "v2-alpha-tpuv6e" ;;
    v5p-*) echo "v2-alpha-tpuv5" ;;
    v5litepod-*) echo "v2-alpha-tpuv5-lite" ;;
    *) echo "tpu-ubuntu2204-base" ;;
  esac
}
