# Shared settings and helpers for scripts/deploy and scripts/teardown (sourced, not run).
# Every setting comes from the environment (or the scripts' flags); see docs/deploy.md
# ("Deploy settings").

PROJECT_ID=${PROJECT_ID:-$(gcloud config get-value project 2>/dev/null || true)}
REGION=${REGION:-us-central1}
REPOSITORY=${REPOSITORY:-image-services}
BUCKET=${BUCKET:-${PROJECT_ID:+$PROJECT_ID-images}}
CLASSIFY_SERVICE=${CLASSIFY_SERVICE:-classify}
PREPROCESS_SERVICE=${PREPROCESS_SERVICE:-preprocess}
JOB_NAME=${JOB_NAME:-classify-bucket}
EVENTS_TRIGGER=${EVENTS_TRIGGER:-$CLASSIFY_SERVICE-events}
DRY_RUN=${DRY_RUN:-0}
MONITORING=deploy/monitoring
GMP_SIDECAR_IMAGE=${GMP_SIDECAR_IMAGE:-us-docker.pkg.dev/cloud-ops-agents-artifacts/cloud-run-gmp-sidecar/cloud-run-gmp-sidecar:1.9.2}
RUNGMP_SECRET=${RUNGMP_SECRET:-rungmp-config}

registry() { echo "$REGION-docker.pkg.dev/$PROJECT_ID/$REPOSITORY"; }
service_account() { echo "$1-sa@$PROJECT_ID.iam.gserviceaccount.com"; }

require_settings() {
  local missing=0
  for name in PROJECT_ID REGION REPOSITORY BUCKET; do
    if [ -z "${!name}" ]; then
      echo "error: $name is not set (export it or run 'gcloud config set project ...')" >&2
      missing=1
    fi
  done
  [ "$missing" = 0 ] || exit 2
}

# Print a command, shell-quoted, then run it unless this is a dry run.
run() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [ "$DRY_RUN" = 1 ] || "$@"
}

# Like run, but a failure is reported and tolerated (for "already exists"/"not found").
run_tolerant() {
  run "$@" || echo "  (continuing: the command above failed, usually because it was already done)" >&2
}

# Does the resource a describe command names exist? (Printed; a dry run assumes it does not.)
exists() {
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [ "$DRY_RUN" = 1 ] && return 1
  "$@" >/dev/null 2>&1
}

# The IDs of the dashboards or alert policies ("GROUP" as gcloud names it) called NAME.
ids_named() {
  local group=$1 name=$2
  # shellcheck disable=SC2086  # the group is several words on purpose
  gcloud $group list --project "$PROJECT_ID" --filter "displayName=\"$name\"" \
    --format "value(name)"
}

# replace_by_name GROUP FILE FLAG: delete GROUP's resources with FILE's displayName, then
# create FILE's (a dashboard or policy gets a new ID each time it is created).
replace_by_name() {
  local group=$1 file=$2 flag=$3 name id
  name=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["displayName"])' "$file")
  printf '+ gcloud %s list --project %q --filter %q --format %q\n' "$group" "$PROJECT_ID" \
    "displayName=\"$name\"" "value(name)"
  if [ "$DRY_RUN" != 1 ]; then
    for id in $(ids_named "$group" "$name"); do
      # shellcheck disable=SC2086
      run gcloud $group delete "$id" --project "$PROJECT_ID" --quiet
    done
  fi
  # shellcheck disable=SC2086
  run gcloud $group create "$flag" "$file" --project "$PROJECT_ID"
}

# delete_by_name GROUP FILE: delete GROUP's resources with FILE's displayName (teardown).
delete_by_name() {
  local group=$1 file=$2 name id deleted=1
  name=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["displayName"])' "$file")
  printf '+ gcloud %s list --project %q --filter %q --format %q\n' "$group" "$PROJECT_ID" \
    "displayName=\"$name\"" "value(name)"
  [ "$DRY_RUN" = 1 ] && return 0
  for id in $(ids_named "$group" "$name" 2>/dev/null); do
    # shellcheck disable=SC2086
    run gcloud $group delete "$id" --project "$PROJECT_ID" --quiet && deleted=0
  done
  return $deleted
}
