#!/usr/bin/env bash
# Restore drill (docs/disaster-recovery.md): prove that a backup restores and
# serves players, and time it against the RTO.
#
#   deploy/dr/restore-drill.sh FILE       drill with a backup file you have
#   deploy/dr/restore-drill.sh            fetch the newest backup from the
#                                         cluster's backups volume first
#
# The drill restores into a scratch embedded store (a temporary data folder,
# never the production database), serves it on a free local port, runs the
# smoke test against it, and prints how long each step took, the backup's age
# (the data a real disaster would lose, against the 15-minute RPO) and the
# total (against the 1-hour RTO). It exits non-zero if a step fails or a budget
# is exceeded.
#
# Environment: NAMESPACE (llamawool-production), RELEASE (llamawool),
# PYTHON (the repository's .venv/bin/python, else python3), RPO_S (900),
# RTO_S (3600), KEEP (1 keeps the scratch folder for inspection).
set -euo pipefail

NAMESPACE=${NAMESPACE:-llamawool-production}
RELEASE=${RELEASE:-llamawool}
RPO_S=${RPO_S:-900}
RTO_S=${RTO_S:-3600}
REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
if [ -x "$REPO/.venv/bin/python" ]; then PYTHON=${PYTHON:-$REPO/.venv/bin/python}; else PYTHON=${PYTHON:-python3}; fi

log() { printf '[restore-drill] %s\n' "$*" >&2; }
now() { date +%s; }

scratch=$(mktemp -d)
server_pid=""
# shellcheck disable=SC2329 # called by the EXIT trap below
cleanup() {
  if [ -n "$server_pid" ]; then kill -TERM "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi
  if [ "${KEEP:-0}" = 1 ]; then log "scratch kept in $scratch"; else rm -rf "$scratch"; fi
}
trap cleanup EXIT

started=$(now)

fetch_newest() {
  local pod image newest
  pod="restore-drill-$(date +%s)"
  image=$(kubectl -n "$NAMESPACE" get cronjob "$RELEASE-backup" \
    -o 'jsonpath={.spec.jobTemplate.spec.template.spec.containers[0].image}')
  log "fetching the newest backup from $NAMESPACE/$RELEASE-backups with $image"
  kubectl -n "$NAMESPACE" apply -f - >/dev/null <<MANIFEST
apiVersion: v1
kind: Pod
metadata:
  name: $pod
  labels: {app.kubernetes.io/name: llamawool, app.kubernetes.io/instance: $RELEASE, app.kubernetes.io/component: restore-drill}
spec:
  restartPolicy: Never
  automountServiceAccountToken: false
  securityContext: {runAsNonRoot: true, runAsUser: 1001, runAsGroup: 1001, seccompProfile: {type: RuntimeDefault}}
  containers:
    - name: fetch
      image: $image
      command: ["sleep", "900"]
      securityContext: {allowPrivilegeEscalation: false, readOnlyRootFilesystem: true, capabilities: {drop: [ALL]}}
      volumeMounts: [{name: backups, mountPath: /backups, readOnly: true}]
  volumes:
    - name: backups
      persistentVolumeClaim: {claimName: $RELEASE-backups, readOnly: true}
MANIFEST
  kubectl -n "$NAMESPACE" wait --for=condition=Ready "pod/$pod" --timeout=300s >/dev/null
  newest=$(kubectl -n "$NAMESPACE" exec "$pod" -- sh -c 'ls -1t /backups/llamawool-*.jsonl.gz | head -n 1')
  kubectl -n "$NAMESPACE" cp "$pod:$newest" "$scratch/$(basename "$newest")" >/dev/null
  kubectl -n "$NAMESPACE" delete pod "$pod" --wait=false >/dev/null
  echo "$scratch/$(basename "$newest")"
}

if [ -n "${1:-}" ]; then backup=$1; else backup=$(fetch_newest); fi
[ -f "$backup" ] || { log "no such backup: $backup"; exit 1; }
fetched=$(now)

# The backup's age: its name carries the time it was taken (llamawool-YYYYmmddTHHMMSSZ.jsonl.gz).
age=$("$PYTHON" - "$backup" <<'PY'
import datetime, os, re, sys
m = re.search(r"(\d{8}T\d{6}Z)", os.path.basename(sys.argv[1]))
taken = (datetime.datetime.strptime(m.group(1), "%Y%m%dT%H%M%SZ").replace(tzinfo=datetime.timezone.utc).timestamp()
         if m else os.path.getmtime(sys.argv[1]))
print(int(datetime.datetime.now(datetime.timezone.utc).timestamp() - taken))
PY
)

export LLAMAWOOL_ENV=development LLAMAWOOL_DATA_DIR="$scratch/data" LLAMAWOOL_REGION=restore-drill
unset MONGODB_URI REDIS_URI LLAMAWOOL_MONGODB_URI LLAMAWOOL_REDIS_URI
log "restoring $backup into $scratch/data"
"$PYTHON" -m llamawool restore --in "$backup"
restored=$(now)

port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
"$PYTHON" -m llamawool serve --host 127.0.0.1 --port "$port" >"$scratch/server.log" 2>&1 &
server_pid=$!
"$PYTHON" "$REPO/deploy/scripts/smoke.py" --url "http://127.0.0.1:$port" --retries 30 --retry-delay 1
served=$(now)

total=$((served - started))
printf 'fetch %ss, restore %ss, serve + smoke %ss, total %ss (RTO %ss); backup age %ss (RPO %ss)\n' \
  "$((fetched - started))" "$((restored - fetched))" "$((served - restored))" "$total" "$RTO_S" "$age" "$RPO_S"
status=0
if [ "$total" -gt "$RTO_S" ]; then log "RTO exceeded"; status=1; fi
if [ "$age" -gt "$RPO_S" ]; then log "the newest backup is older than the RPO: check the backup CronJob"; status=1; fi
exit "$status"
