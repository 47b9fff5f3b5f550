#!/usr/bin/env bash
# Install this checkout of msm-jax on every worker of a TPU VM, from a fresh image:
#   - the code only (no .git, .venv, runs/, checkpoints/, shards or logs), unpacked over any older copy;
#   - Python >= 3.11 (TPU VM images ship 3.10) through uv, installed from PyPI with the image's pip;
#   - a virtualenv at ~/msm-venv with msm-jax[tpu] and gcsfs;
#   - with --bucket: gcsfuse (Google's apt repository) and the bucket mounted at /gcs/BUCKET, so
#     stage folders under /gcs/BUCKET/... are one shared file system for every worker.
# Safe to rerun (after a preemption, spot_run.sh does).
#   tools/tpu/install.sh --name msm-v5p --zone us-east5-a [--bucket my-bucket] [--source .] [--dry-run]
set -euo pipefail
source "$(dirname "$0")/common.sh"

SOURCE="$(cd "$(dirname "$0")/../.." && pwd)" REMOTE_DIR="msm-jax" BUCKET="" PYTHON_VERSION="3.11"
ARCHIVE="${TMPDIR:-/tmp}/msm-jax-src.tgz"
usage() { echo "usage: $0 --name NAME --zone ZONE [--project P] [--bucket BUCKET] [--source DIR] [--remote-dir DIR] [--python 3.11|3.12] [--dry-run]"; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    --bucket) BUCKET="${2#gs://}"; BUCKET="${BUCKET%/}"; shift 2 ;;
    --remote-dir) REMOTE_DIR="$2"; shift 2 ;;
    --python) PYTHON_VERSION="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    *) usage >&2; die "unknown argument $1" ;;
  esac
done
need_name_zone

# Only the code travels: what msm writes (runs, checkpoints, shards, logs) and local tooling stay.
EXCLUDES=(./.git ./.venv ./runs ./checkpoints ./out ./.msm_local ./.msm_logs ./.pytest_cache ./data/shards
          __pycache__ '*.pyc' '*.array_record' '*.egg-info')
tar_args=(tar czf "$ARCHIVE")
for pattern in "${EXCLUDES[@]}"; do tar_args+=("--exclude=$pattern"); done
run "${tar_args[@]}" -C "$SOURCE" .
tpu_vm scp "$ARCHIVE" "$NAME:msm-jax-src.tgz" --worker=all

UV='$HOME/.local/bin/uv'
setup=(
  "set -e"
  "mkdir -p $REMOTE_DIR && tar xzf msm-jax-src.tgz -C $REMOTE_DIR && rm msm-jax-src.tgz"
  "(python3 -m pip install --user -q uv || python3 -m pip install --user -q --break-system-packages uv)"
  "[ -x \$HOME/msm-venv/bin/python ] || $UV venv --seed --python $PYTHON_VERSION \$HOME/msm-venv"
  "cd $REMOTE_DIR && \$HOME/msm-venv/bin/python -m pip install -q -e '.[tpu]' gcsfs -f https://storage.googleapis.com/jax-releases/libtpu_releases.html"
)
tpu_vm ssh "$NAME" --worker=all --command "$(join_lines "${setup[@]}")"
if [[ -n "$BUCKET" ]]; then
  mount=(
    "set -e"
    "if ! command -v gcsfuse >/dev/null; then curl -fsSL https://packages.cloud.google.com/apt/doc/apt-key.gpg | sudo tee /usr/share/keyrings/cloud.google.asc >/dev/null"
    "echo \"deb [signed-by=/usr/share/keyrings/cloud.google.asc] https://packages.cloud.google.com/apt gcsfuse-\$(lsb_release -c -s) main\" | sudo tee /etc/apt/sources.list.d/gcsfuse.list >/dev/null"
    "sudo apt-get update -q && sudo apt-get install -y -q fuse gcsfuse; fi"
    "sudo mkdir -p /gcs/$BUCKET && sudo chown \$USER /gcs/$BUCKET"
    "mountpoint -q /gcs/$BUCKET || gcsfuse --implicit-dirs $BUCKET /gcs/$BUCKET"
  )
  tpu_vm ssh "$NAME" --worker=all --command "$(join_lines "${mount[@]}")"
fi
