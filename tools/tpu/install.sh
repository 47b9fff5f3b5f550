#!/usr/bin/env bash
# Install this checkout of msm-jax (plus jax[tpu] and gcsfs) on every worker of a TPU VM and,
# with --bucket, mount that Cloud Storage bucket at /gcs/BUCKET on every worker (gcsfuse), so
# stage folders under /gcs/BUCKET/... are one shared file system for every stage command.
#   tools/tpu/install.sh --name msm-v5p --zone us-east5-a [--bucket my-bucket] [--source .] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"

SOURCE="$(cd "$(dirname "$0")/../.." && pwd)" REMOTE_DIR="msm-jax" BUCKET=""
ARCHIVE="${TMPDIR:-/tmp}/msm-jax-src.tgz"
usage() { echo "usage: $0 --name NAME --zone ZONE [--project P] [--bucket BUCKET] [--source DIR] [--remote-dir DIR] [--dry-run]"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    --bucket) BUCKET="${2#gs://}"; shift 2 ;;
    --remote-dir) REMOTE_DIR="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done
need_name_zone

# The same source on every worker: a tarball of this checkout (no venv, runs or git history).
run tar czf "$ARCHIVE" --exclude=.venv --exclude=.git --exclude=runs --exclude=.msm_local --exclude=.msm_logs \
  -C "$SOURCE" .
tpu_vm scp "$ARCHIVE" "$NAME:msm-jax-src.tgz" --worker=all
tpu_vm ssh "$NAME" --worker=all --command \
  "mkdir -p $REMOTE_DIR && tar xzf msm-jax-src.tgz -C $REMOTE_DIR && cd $REMOTE_DIR && python3 -m pip install -q -e '.[tpu]' gcsfs -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
if [[ -n "$BUCKET" ]]; then
  tpu_vm ssh "$NAME" --worker=all --command \
    "sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET && gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET"
fi
