#!/usr/bin/env bash
# Run a command to completion on spot/preemptible TPU capacity: make sure the TPU VM exists
# and is READY (creating it and installing msm-jax if it was preempted or never made), run
# the command, and when it fails because the TPU was preempted, start over. Re-running is
# safe: finished stages are skipped by their manifests and train stages resume from their
# checkpoints in the shared bucket (mounted at /gcs/BUCKET by install.sh).
#   tools/tpu/spot_run.sh --name msm-v5p --zone us-east5-a --accelerator v5p-32 -- \
#     msm run configs/recipes/llama3.1-8b-cheese.yaml out=/gcs/BUCKET/runs/cheese \
#       --launcher tpu --tpu-name msm-v5p --tpu-zone us-east5-a
set -euo pipefail
HERE="$(dirname "$0")"
source "$HERE/common.sh"

ACCEL="" VERSION="" SOURCE="" BUCKET="" MAX_ATTEMPTS=20 POLL_S="${MSM_TPU_POLL_S:-60}"
usage() { echo "usage: $0 --name NAME --zone ZONE --accelerator TYPE [--version IMAGE] [--project P] [--bucket B] [--source DIR] [--max-attempts N] [--dry-run] -- COMMAND..."; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --accelerator) ACCEL="$2"; shift 2 ;;
    --version) VERSION="$2"; shift 2 ;;
    --source) SOURCE="$2"; shift 2 ;;
    --bucket) BUCKET="$2"; shift 2 ;;
    --max-attempts) MAX_ATTEMPTS="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown argument $1 (put the command after --)" ;;
  esac
done
need_name_zone
[[ -n "$ACCEL" ]] || die "--accelerator is required (e.g. v5p-32, v6e-16)"
[[ $# -gt 0 ]] || die "no command given after --"

common=(--name "$NAME" --zone "$ZONE")
if [[ -n "$PROJECT" ]]; then common+=(--project "$PROJECT"); fi
dry=()
if [[ "$DRY_RUN" == 1 ]]; then dry=(--dry-run); fi

# READY, PREEMPTED, CREATING, ... or MISSING. A dry run assumes MISSING (the full sequence).
tpu_state() {
  if [[ "$DRY_RUN" == 1 ]]; then echo MISSING; return; fi
  local args=(gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" --format="value(state)")
  if [[ -n "$PROJECT" ]]; then args+=(--project "$PROJECT"); fi
  "${args[@]}" 2>/dev/null || echo MISSING
}

# Create (create.sh retries "no capacity" with backoff) and install; returns create.sh's 75
# when capacity never came, so the loop below waits and tries again instead of giving up.
provision() {
  local rc=0
  bash "$HERE/create.sh" "${common[@]}" --accelerator "$ACCEL" ${VERSION:+--version "$VERSION"} --spot "${dry[@]}" || rc=$?
  if (( rc != 0 )); then return "$rc"; fi
  bash "$HERE/install.sh" "${common[@]}" ${SOURCE:+--source "$SOURCE"} ${BUCKET:+--bucket "$BUCKET"} "${dry[@]}"
}

# provision, or say why not: 0 ready, 1 retry later (no capacity), exits on any other failure
provision_or_wait() {
  local rc=0
  provision || rc=$?
  if (( rc == EX_CAPACITY )); then
    echo "spot_run: no capacity yet; trying again in ${POLL_S}s"
    sleep "$POLL_S"
    return 1
  fi
  if (( rc != 0 )); then
    echo "spot_run: provisioning failed (exit $rc), not a capacity problem: stopping" >&2
    exit "$rc"
  fi
}

for ((attempt = 1; attempt <= MAX_ATTEMPTS; attempt++)); do
  state="$(tpu_state)"
  echo "spot_run: attempt $attempt/$MAX_ATTEMPTS, TPU $NAME is $state"
  case "$state" in
    READY) ;;
    MISSING) provision_or_wait || continue ;;
    PREEMPTED|TERMINATED|STOPPED|SUSPENDED)
      tpu_vm delete "$NAME" --quiet
      provision_or_wait || continue ;;
    *) sleep "$POLL_S"; continue ;;  # CREATING, REPAIRING, DELETING...: wait for it to settle
  esac
  if run "$@"; then
    echo "spot_run: done"
    exit 0
  else
    rc=$?
  fi
  state="$(tpu_state)"
  if [[ "$state" == READY ]]; then
    echo "spot_run: the command failed (exit $rc) while the TPU is READY: not a preemption, stopping" >&2
    exit "$rc"
  fi
  echo "spot_run: TPU $NAME is $state (preempted?); recreating it and resuming"
  sleep "$POLL_S"
done
echo "spot_run: gave up after $MAX_ATTEMPTS attempts" >&2
exit 1
