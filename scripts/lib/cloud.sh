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

# create COMMAND...: run a create command; when what it creates already exists, say so and set
# EXISTED=1 (the caller may update it); any other failure prints gcloud's error and fails.
exec 4>&1  # the script's stdout, for what a captured command passes on
EXISTED=0
create() {
  EXISTED=0
  printf '+'
  printf ' %q' "$@"
  printf '\n'
  [ "$DRY_RUN" = 1 ] && return 0
  local err
  if err=$("$@" 2>&1 1>&4); then  # its stderr read here, its stdout passed on
    [ -z "$err" ] || printf '%s\n' "$err" >&2  # gcloud's own "Created ..." lines
    return 0
  fi
  if grep -qiE "already exists|ALREADY_EXISTS|409" <<<"$err"; then
    echo "  (already exists)"
    EXISTED=1
    return 0
  fi
  printf '%s\n' "$err" >&2
  echo "error: the command above failed (gcloud's message is above)" >&2
  return 1  # stops the script (set -e), unless retried
}

# retry ATTEMPTS WAIT_S COMMAND...: where Google documents propagation delays (new IAM grants
# to service agents), try again after WAIT_S, 2 x WAIT_S, ... before giving up with its error.
retry() {
  local attempts=$1 wait_s=$2 attempt=1
  shift 2
  while ! "$@"; do
    if [ "$attempt" -ge "$attempts" ]; then
      echo "error: still failing after $attempts attempts" >&2
      return 1
    fi
    echo "  (retrying in $((wait_s * attempt)) s: permissions can take minutes to propagate)" >&2
    sleep $((wait_s * attempt))
    attempt=$((attempt + 1))
  done
}

# value PLACEHOLDER COMMAND...: the one value a describe prints, for `x=$(value ...)`; the
# command is printed as run prints it (on fd 4, the script's stdout), PLACEHOLDER in a dry run.
value() {
  local placeholder=$1
  shift
  { printf '+'; printf ' %q' "$@"; printf '\n'; } >&4
  if [ "$DRY_RUN" = 1 ]; then echo "$placeholder"; else "$@"; fi
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

# keyless_ci OWNER/REPO: what .github/workflows/deploy.yml authenticates with, no key anywhere.
# A deployer service account (deploy Cloud Run, push images, act as the runtime accounts), a
# Workload Identity pool whose GitHub provider admits tokens of that one repository only (the
# attribute condition google-github-actions/auth insists on), the binding that lets the
# repository's workflows impersonate the deployer, and the repository variables to set.
keyless_ci() {
  local repo=$1 pool=github deployer number provider
  if ! [[ "$repo" =~ ^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$ ]]; then
    echo "error: --github takes OWNER/REPO, not '$repo'" >&2
    exit 2
  fi
  echo "== keyless deploys from GitHub Actions in $repo"
  deployer=$(service_account github-deployer)
  run gcloud services enable iamcredentials.googleapis.com sts.googleapis.com \
    --project "$PROJECT_ID"
  create gcloud iam service-accounts create github-deployer-sa --project "$PROJECT_ID" \
    --display-name "GitHub Actions deployer ($repo)"
  for role in roles/run.admin roles/artifactregistry.writer; do
    run gcloud projects add-iam-policy-binding "$PROJECT_ID" \
      --member "serviceAccount:$deployer" --role "$role" --condition None
  done
  for runtime_sa in "$(service_account "$PREPROCESS_SERVICE")" "$(service_account "$CLASSIFY_SERVICE")"; do
    run gcloud iam service-accounts add-iam-policy-binding "$runtime_sa" --project "$PROJECT_ID" \
      --member "serviceAccount:$deployer" --role roles/iam.serviceAccountUser
  done
  create gcloud iam workload-identity-pools create "$pool" --location global \
    --project "$PROJECT_ID" --display-name "GitHub Actions"
  local provider_flags=(
    --workload-identity-pool "$pool" --location global --project "$PROJECT_ID"
    --issuer-uri https://token.actions.githubusercontent.com
    --attribute-mapping "google.subject=assertion.sub,attribute.repository=assertion.repository,attribute.ref=assertion.ref"
    --attribute-condition "assertion.repository == '$repo'"
  )
  create gcloud iam workload-identity-pools providers create-oidc github "${provider_flags[@]}"
  if [ "$EXISTED" = 1 ]; then
    run gcloud iam workload-identity-pools providers update-oidc github "${provider_flags[@]}"
  fi
  number=$(value PROJECT_NUMBER gcloud projects describe "$PROJECT_ID" \
    --format "value(projectNumber)")
  run gcloud iam service-accounts add-iam-policy-binding "$deployer" --project "$PROJECT_ID" \
    --role roles/iam.workloadIdentityUser --member \
    "principalSet://iam.googleapis.com/projects/$number/locations/global/workloadIdentityPools/$pool/attribute.repository/$repo"
  provider="projects/$number/locations/global/workloadIdentityPools/$pool/providers/github"
  echo "== set these variables in $repo (Settings > Secrets and variables > Actions > Variables):"
  echo "gh variable set GCP_PROJECT_ID --repo $repo --body $PROJECT_ID"
  echo "gh variable set GCP_REGION --repo $repo --body $REGION"
  echo "gh variable set GCP_REPOSITORY --repo $repo --body $REPOSITORY"
  echo "gh variable set GCP_BUCKET --repo $repo --body $BUCKET"
  echo "gh variable set GCP_WORKLOAD_IDENTITY_PROVIDER --repo $repo --body $provider"
  echo "gh variable set GCP_DEPLOY_SERVICE_ACCOUNT --repo $repo --body $deployer"
}
