#!/usr/bin/env bash
# Blue-green releases of llamawool with Helm (deploy/blue-green/README.md).
#
#   blue-green.sh deploy TAG   deploy TAG to the idle colour, wait for it to be
#                              ready, smoke test it, switch the Service to it,
#                              smoke test again; roll back on any failure.
#   blue-green.sh rollback     point the Service back at the other colour.
#   blue-green.sh retire       scale the inactive colour away.
#   blue-green.sh status       print the active colour and both images.
#
# The cluster is the state: the Service's selector says which colour is live,
# each colour's Deployment says which tag it runs. Every Helm call passes the
# whole blue-green state, so nothing depends on --reuse-values.
#
# Environment: NAMESPACE (llamawool-production), RELEASE (llamawool), CHART
# (deploy/helm/llamawool), VALUES (space-separated values files, default the
# production one), TIMEOUT (10m), RETIRE_AFTER (seconds before the old colour
# is scaled away after a good switch; 0 keeps it for `rollback`; default 300,
# the seed's five minutes), SMOKE_URL (smoke test this URL instead of
# port-forwarding to the colour's preview Service), SMOKE_PORT (18080),
# SMOKE_RETRIES (3) and SMOKE_RETRY_DELAY (5 s), IMAGE_REPOSITORY (overrides
# the chart's image.repository).
set -euo pipefail

NAMESPACE=${NAMESPACE:-llamawool-production}
RELEASE=${RELEASE:-llamawool}
HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(cd "$HERE/../.." && pwd)
CHART=${CHART:-$REPO/deploy/helm/llamawool}
VALUES=${VALUES:-$REPO/deploy/helm/llamawool/values-production.yaml}
TIMEOUT=${TIMEOUT:-10m}
RETIRE_AFTER=${RETIRE_AFTER:-300}
SMOKE_PORT=${SMOKE_PORT:-18080}
SMOKE_RETRIES=${SMOKE_RETRIES:-3}
SMOKE_RETRY_DELAY=${SMOKE_RETRY_DELAY:-5}
PYTHON=${PYTHON:-python3}

log() { printf '[blue-green] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }

other() { if [ "$1" = blue ]; then echo green; else echo blue; fi; }

# The live colour, from the Service's selector ("" before the first blue-green release).
active_colour() {
  kubectl -n "$NAMESPACE" get service "$RELEASE" \
    -o 'jsonpath={.spec.selector.llamawool\.io/color}' 2>/dev/null || true
}

# The tag a colour runs ("" if it has no Deployment).
colour_tag() {
  local image
  image=$(kubectl -n "$NAMESPACE" get deployment "$RELEASE-$1" \
    -o 'jsonpath={.spec.template.spec.containers[0].image}' 2>/dev/null || true)
  if [ -n "$image" ]; then echo "${image##*:}"; fi
}

# helm_apply ACTIVE BLUE_TAG GREEN_TAG: a colour with an empty tag is switched off.
helm_apply() {
  local active=$1 blue=$2 green=$3 args=() file
  for file in $VALUES; do args+=(-f "$file"); done
  if [ -n "${IMAGE_REPOSITORY:-}" ]; then args+=(--set "image.repository=$IMAGE_REPOSITORY"); fi
  args+=(--set blueGreen.enabled=true --set "blueGreen.active=$active")
  if [ -n "$blue" ]; then
    args+=(--set blueGreen.blue.enabled=true --set-string "blueGreen.blue.tag=$blue")
  else
    args+=(--set blueGreen.blue.enabled=false)
  fi
  if [ -n "$green" ]; then
    args+=(--set blueGreen.green.enabled=true --set-string "blueGreen.green.tag=$green")
  else
    args+=(--set blueGreen.green.enabled=false)
  fi
  helm upgrade --install "$RELEASE" "$CHART" -n "$NAMESPACE" "${args[@]}" --wait --timeout "$TIMEOUT"
}

# tags_with COLOUR TAG OTHER_TAG: set the caller's `blue` and `green` so that
# COLOUR runs TAG and the other colour OTHER_TAG (bash scoping is dynamic).
tags_with() {
  if [ "$1" = blue ]; then blue=$2 green=$3; else blue=$3 green=$2; fi
}

smoke() {
  local service=$1 pid status
  if [ -n "${SMOKE_URL:-}" ]; then
    "$PYTHON" "$REPO/deploy/scripts/smoke.py" --url "$SMOKE_URL" \
      --retries "$SMOKE_RETRIES" --retry-delay "$SMOKE_RETRY_DELAY"
    return
  fi
  kubectl -n "$NAMESPACE" port-forward "service/$service" "$SMOKE_PORT:http" >/dev/null 2>&1 &
  pid=$!
  status=0
  "$PYTHON" "$REPO/deploy/scripts/smoke.py" --url "http://127.0.0.1:$SMOKE_PORT" \
    --retries "$SMOKE_RETRIES" --retry-delay "$SMOKE_RETRY_DELAY" || status=$?
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  return "$status"
}

deploy() {
  local tag=$1 active idle active_tag blue green
  active=$(active_colour)
  if [ -z "$active" ]; then
    log "no blue-green release yet: installing $tag as blue"
    helm_apply blue "$tag" ""
    kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE-blue" --timeout "$TIMEOUT"
    smoke "$RELEASE"
    return
  fi
  idle=$(other "$active")
  active_tag=$(colour_tag "$active")
  [ -n "$active_tag" ] || die "the active colour $active has no Deployment"
  log "active: $active ($active_tag); deploying $tag to $idle"

  tags_with "$idle" "$tag" "$active_tag"
  if ! helm_apply "$active" "$blue" "$green" \
    || ! kubectl -n "$NAMESPACE" rollout status "deployment/$RELEASE-$idle" --timeout "$TIMEOUT" \
    || ! smoke "$RELEASE-$idle"; then
    log "$idle failed before the switch: removing it; traffic never left $active"
    tags_with "$active" "$active_tag" ""
    helm_apply "$active" "$blue" "$green" || log "could not remove $idle: remove it by hand"
    exit 1
  fi

  log "switching the Service to $idle"
  tags_with "$idle" "$tag" "$active_tag"
  if ! helm_apply "$idle" "$blue" "$green" || ! smoke "$RELEASE"; then
    log "the switch to $idle failed: switching back to $active"
    helm_apply "$active" "$blue" "$green" || die "could not switch back: run '$0 rollback'"
    tags_with "$active" "$active_tag" ""
    helm_apply "$active" "$blue" "$green" || log "could not remove $idle: remove it by hand"
    exit 1
  fi
  log "live on $idle ($tag); $active ($active_tag) stays up for rollback"

  if [ "$RETIRE_AFTER" -gt 0 ]; then
    log "retiring $active in ${RETIRE_AFTER}s"
    sleep "$RETIRE_AFTER"
    retire
  fi
}

rollback() {
  local active previous active_tag previous_tag blue green
  active=$(active_colour)
  [ -n "$active" ] || die "no blue-green release in $NAMESPACE"
  previous=$(other "$active")
  previous_tag=$(colour_tag "$previous")
  [ -n "$previous_tag" ] || die "$previous is not running: nothing to roll back to (deploy the old tag instead)"
  active_tag=$(colour_tag "$active")
  tags_with "$previous" "$previous_tag" "$active_tag"
  helm_apply "$previous" "$blue" "$green"
  log "rolled back: live on $previous ($previous_tag)"
}

retire() {
  local active active_tag blue green
  active=$(active_colour)
  [ -n "$active" ] || die "no blue-green release in $NAMESPACE"
  active_tag=$(colour_tag "$active")
  tags_with "$active" "$active_tag" ""
  helm_apply "$active" "$blue" "$green"
  log "retired $(other "$active"); live on $active ($active_tag)"
}

status() {
  local active
  active=$(active_colour)
  echo "active: ${active:-none}"
  echo "blue:   $(colour_tag blue)"
  echo "green:  $(colour_tag green)"
}

case "${1:-}" in
  deploy)
    [ -n "${2:-}" ] || die "usage: $0 deploy TAG"
    deploy "$2"
    ;;
  rollback) rollback ;;
  retire) retire ;;
  status) status ;;
  *)
    sed -n '2,13p' "$0" >&2
    exit 2
    ;;
esac
