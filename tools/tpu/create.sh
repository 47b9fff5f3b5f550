#!/usr/bin/env bash
# Create a TPU VM or a multi-host slice (one VM per worker host), on-demand or spot. A "no
# capacity" / stockout / quota answer is retried with exponential backoff (60 s doubling to
# 10 min) for up to --capacity-wait seconds; then the script exits 75 so a caller can try later.
#   tools/tpu/create.sh --name msm-v5p --zone us-east5-a --accelerator v5p-32 --spot [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"

ACCEL="" VERSION="" SPOT=0 CAPACITY_WAIT="${MSM_TPU_CAPACITY_WAIT_S:-3600}"
BACKOFF="${MSM_TPU_BACKOFF_S:-60}" MAX_BACKOFF="${MSM_TPU_MAX_BACKOFF_S:-600}"
usage() { echo "usage: $0 --name NAME --zone ZONE --accelerator TYPE [--version IMAGE] [--project P] [--spot] [--capacity-wait SECONDS] [--dry-run]"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
    --capacity-wait) CAPACITY_WAIT="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done
need_name_zone
[[ -n "$ACCEL" ]] || die "--accelerator is required (e.g. v5p-32, v6e-16)"
VERSION="${VERSION:-$(default_version "$ACCEL")}"

args=(create "$NAME" --accelerator-type "$ACCEL" --version "$VERSION")
if [[ "$SPOT" == 1 ]]; then args+=(--spot); fi

waited=0
while true; do
  if output="$(tpu_vm "${args[@]}" 2>&1)"; then
    printf '%s\n' "$output"
    exit 0
  fi
  printf '%s\n' "$output" >&2
  if ! is_capacity_error "$output"; then
    echo "create.sh: gcloud failed (not a capacity error); fix the cause above and rerun" >&2
    exit 1
  fi
  if (( waited >= CAPACITY_WAIT )); then
    echo "create.sh: no capacity for $ACCEL in $ZONE after ${waited}s of retries" >&2
    exit "$EX_CAPACITY"
  fi
  echo "create.sh: no capacity for $ACCEL in $ZONE; retrying in ${BACKOFF}s" >&2
  sleep "$BACKOFF"
  waited=$((waited + BACKOFF))
  BACKOFF=$((BACKOFF * 2 > MAX_BACKOFF ? MAX_BACKOFF : BACKOFF * 2))
  # a failed create can leave a half-made node behind; delete it so the name is free
  tpu_vm delete "$NAME" --quiet >/dev/null 2>&1 || true
done
