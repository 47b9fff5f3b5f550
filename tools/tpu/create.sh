#!/usr/bin/env bash
# Create a TPU VM or a multi-host slice (one VM per worker host), on-demand or spot.
#   tools/tpu/create.sh --name msm-v5p --zone us-east5-a --accelerator v5p-32 --spot [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"

ACCEL="" VERSION="" SPOT=0
usage() { echo "usage: $0 --name NAME --zone ZONE --accelerator TYPE [--version IMAGE] [--project P] [--spot] [--dry-run]"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --spot) SPOT=1; shift ;;
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
tpu_vm "${args[@]}"
