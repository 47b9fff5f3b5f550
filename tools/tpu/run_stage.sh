#!/usr/bin/env bash
# Run one command on TPU VM workers: all at once for JAX stages (multi-host training and
# eval initialise jax.distributed themselves), worker 0 for CPU stages.
#   tools/tpu/run_stage.sh --name msm-v5p --zone us-east5-a --workers all -- msm train cfg.yaml run_dir=...
# The Anthropic key goes only where the API is called: for `msm generate` and `msm eval` (or
# with --secret-env NAME), $NAME is piped through ssh's stdin to worker 0's command, which reads
# it into its environment: it is never on a command line, in a file, or on the other workers.
set -euo pipefail
source "$(dirname "$0")/common.sh"

WORKERS="all" REMOTE_DIR="msm-jax" SECRET=""
usage() { echo "usage: $0 --name NAME --zone ZONE [--project P] [--workers all|N] [--remote-dir DIR] [--secret-env NAME] [--dry-run] -- COMMAND..."; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --name) NAME="$2"; shift 2 ;;
    --zone) ZONE="$2"; shift 2 ;;
    --project) PROJECT="$2"; shift 2 ;;
    --workers) WORKERS="$2"; shift 2 ;;
    --remote-dir) REMOTE_DIR="$2"; shift 2 ;;
    --secret-env) SECRET="$2"; shift 2 ;;
    --dry-run) DRY_RUN=1; shift ;;
    -h|--help) usage; exit 0 ;;
    --) shift; break ;;
    *) usage >&2; die "unknown argument $1 (put the command after --)" ;;
  esac
done
need_name_zone
[[ $# -gt 0 ]] || die "no command given after --"
if [[ -z "$SECRET" && "$1" == msm && "${2:-}" =~ ^(generate|eval)$ ]]; then SECRET=ANTHROPIC_API_KEY; fi
[[ -z "$SECRET" || "$SECRET" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || die "--secret-env: $SECRET is not a variable name"

prefix="cd $REMOTE_DIR && export PATH=\$HOME/msm-venv/bin:\$PATH &&"
remote_cmd="$prefix $(quote_args "$@")"
if [[ -z "$SECRET" || -z "${!SECRET:-}" ]]; then
  tpu_vm ssh "$NAME" --worker="$WORKERS" --command "$remote_cmd"
  exit 0
fi

# worker 0 gets the secret on stdin; the other workers (if any) run the same command without it
count=1
if [[ "$WORKERS" == all && "$DRY_RUN" != 1 ]]; then
  count="$(gcloud compute tpus tpu-vm describe "$NAME" --zone "$ZONE" ${PROJECT:+--project "$PROJECT"} \
    --format='value(networkEndpoints.len())' 2>/dev/null || echo 1)"
  [[ "$count" =~ ^[0-9]+$ ]] || count=1
elif [[ "$WORKERS" != all && "$WORKERS" != 0 ]]; then
  die "--secret-env: the secret goes to worker 0 only; use --workers 0 or all"
fi
pids=()
for ((w = 1; w < count; w++)); do
  tpu_vm ssh "$NAME" --worker="$w" --command "$remote_cmd" </dev/null &
  pids+=($!)
done
printf '%s\n' "${!SECRET}" | tpu_vm ssh "$NAME" --worker=0 --command "IFS= read -r $SECRET && export $SECRET && $remote_cmd" &
pids+=($!)
rc=0
for pid in "${pids[@]}"; do wait "$pid" || rc=$?; done
exit "$rc"
