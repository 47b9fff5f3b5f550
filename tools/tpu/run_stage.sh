#!/usr/bin/env bash
# Run one command on TPU VM workers: all at once for JAX stages (multi-host training and
# eval initialise jax.distributed themselves), worker 0 for CPU stages.
#   tools/tpu/run_stage.sh --name msm-v5p --zone us-east5-a --workers all -- msm train cfg.yaml run_dir=...
set -euo pipefail
source "$(dirname "$0")/common.sh"

WORKERS="all" REMOTE_DIR="msm-jax"
usage() { echo "usage: $0 --name NAME --zone ZONE [--project P] [--workers all|N] [--remote-dir DIR] [--dry-run] -- COMMAND..."; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --remote-dir) REMOTE_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown argument $1 (put the command after --)" ;;
  esac
done
need_name_zone
[[ $# -gt 0 ]] || die "no command given after --"

remote_cmd=" $(quote_args "$@")"
tpu_vm ssh "$NAME" --worker="$WORKERS" --command \
  "cd $REMOTE_DIR && export PATH=\$HOME/.local/bin:\$PATH &&$remote_cmd"
