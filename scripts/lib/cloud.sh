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
