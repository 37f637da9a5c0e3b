"""scripts/deploy and scripts/teardown, run with a recording `gcloud`/`docker`/`bentoml` first
on PATH (nothing reaches Google), plus a check against the real gcloud CLI that every
subcommand and flag they use exists."""

from __future__ import annotations

import json
import os
import re
import runpy
import shlex
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml
from conftest import REPO

from classify.runtime_table import ALL_RUNTIMES
from classify.runtime_table import spec as runtime_spec
from scripts.sizing import (
    PROBE_PERIOD_S,
    measured,
    memory_mib,
    startup_probe,
    startup_window_s,
)

RECORDER = """#!/usr/bin/env bash
printf '%s' "$(basename "$0")" >> "$RECORD"
printf ' %q' "$@" >> "$RECORD"
printf '\\n' >> "$RECORD"
if [ "$(basename "$0")" = gcloud ] && [ "$1 $2 $3" = "run services describe" ]; then
  echo "https://$4-abc123-uc.a.run.app"
fi
if [ -n "${STUB_FAIL_ON:-}" ] && [[ "$*" == *"$STUB_FAIL_ON"* ]]; then
  echo "ERROR: (gcloud) $STUB_FAILURE" >&2
  exit 1
fi
if [ "$(basename "$0")" = gcloud ]; then
  case "$1 $2 $3" in
    "storage buckets describe") echo "${STUB_BUCKET_LOCATION:-EUROPE-WEST1}" ;;
    "projects describe demo-project") echo 123456789 ;;
    "storage service-agent --project") echo service-123456789@gs-project-accounts.iam.x ;;
    "eventarc triggers describe") echo projects/demo-project/subscriptions/eventarc-sub-1 ;;
  esac
fi
if [ "$(basename "$0")" = gcloud ] && [ "$1 $2 $3" = "monitoring dashboards list" ]; then
  echo "projects/demo-project/dashboards/d-1"
fi
if [ "$(basename "$0")" = gcloud ] && [ "$1 $2 $3 $4" = "alpha monitoring policies list" ]; then
  echo "projects/demo-project/alertPolicies/p-1"
fi
"""
SETTINGS = {"PROJECT_ID": "demo-project", "REGION": "europe-west1", "BUCKET": "demo-images"}
REGISTRY = "europe-west1-docker.pkg.dev/demo-project/image-services"


@pytest.fixture
def stubs(tmp_path: Path) -> dict[str, str]:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name in ("gcloud", "docker", "bentoml"):
        stub = bin_dir / name
        stub.write_text(RECORDER)
        stub.chmod(0o755)
    record = tmp_path / "record.txt"
    record.touch()
    return {
        **os.environ,
        **SETTINGS,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "RECORD": str(record),
        "BENTOML": str(bin_dir / "bentoml"),
    }


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(REPO / "scripts" / args[0]), *args[1:]],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def recorded(env: dict[str, str]) -> list[list[str]]:
    return [shlex.split(line) for line in Path(env["RECORD"]).read_text().splitlines()]


def printed(output: str) -> list[list[str]]:
    return [shlex.split(line[2:]) for line in output.splitlines() if line.startswith("+ ")]


def test_dry_runs_print_everything_and_run_nothing(stubs):
    deploy = run_script(stubs, "deploy", "--dry-run", "--setup", "--invoker", "user:me@x.org")
    teardown = run_script(stubs, "teardown", "--dry-run", "--delete-bucket", "--delete-repository")
    assert deploy.returncode == 0, deploy.stderr
    assert teardown.returncode == 0, teardown.stderr
    assert recorded(stubs) == []
    assert len(printed(deploy.stdout)) == 19 and len(printed(teardown.stdout)) == 19
    assert "would delete (dry run)" in teardown.stdout


PROJECT_QUIET = ("--project", "demo-project", "--quiet")
DEAD_LETTER = "classify-events-dead-letter"
IMAGES_DELETE = ("gcloud", "artifacts", "docker", "images", "delete")


def _delete(*words: str, where: str = "--region") -> list[str]:
    """`gcloud <words...> --<where> europe-west1 --project demo-project --quiet`."""
    return ["gcloud", *words, where, "europe-west1", *PROJECT_QUIET]


def test_teardown_commands_and_order(stubs):
    result = run_script(stubs, "teardown")
    assert result.returncode == 0, result.stderr
    events_sa = "classify-events-sa@demo-project.iam.gserviceaccount.com"
    describe = ["gcloud", "storage", "buckets", "describe", "gs://demo-images"]
    assert recorded(stubs) == [
        [*describe, "--format", "value(location)", "--project", "demo-project"],
        _delete("eventarc", "triggers", "delete", "classify-events", where="--location"),
        ["gcloud", "pubsub", "subscriptions", "delete", DEAD_LETTER, *PROJECT_QUIET],
        ["gcloud", "pubsub", "topics", "delete", DEAD_LETTER, *PROJECT_QUIET],
        ["gcloud", "iam", "service-accounts", "delete", events_sa, *PROJECT_QUIET],
        _delete("run", "jobs", "delete", "classify-bucket"),
        _delete("run", "services", "delete", "classify"),
        _delete("run", "services", "delete", "preprocess"),
        [*IMAGES_DELETE, f"{REGISTRY}/classify", "--delete-tags", "--quiet"],
        [*IMAGES_DELETE, f"{REGISTRY}/preprocess", "--delete-tags", "--quiet"],
        *_by_name("monitoring dashboards", "image-services", "d-1"),
        *_by_name("alpha monitoring policies", POLICIES[0], "p-1"),
        *_by_name("alpha monitoring policies", POLICIES[1], "p-1"),
        *_by_name("alpha monitoring policies", POLICIES[2], "p-1"),
        ["gcloud", "logging", "metrics", "delete", "image-services-errors-by-code", *PROJECT_QUIET],
        ["gcloud", "logging", "metrics", "delete", LOG_METRICS[1], *PROJECT_QUIET],
        ["gcloud", "secrets", "delete", "rungmp-config", *PROJECT_QUIET],
    ]
    assert "deleted:" in result.stdout and "kept gs://demo-images" in result.stdout
    assert "dashboard image-services" in result.stdout and "secret rungmp-config" in result.stdout


POLICIES = (
    "image-services: 5xx answers over 5% of requests",
    "image-services: storage events retried for 15 minutes",
    "image-services: p99 latency over 5 s",
)
LOG_METRICS = ("image-services-errors-by-code", "classify-bucket-photos-per-second")


def _by_name(group: str, name: str, found_id: str) -> list[list[str]]:
    """Listing GROUP's resources called NAME (the stub finds one), then deleting it."""
    words = group.split()
    kind = "dashboards" if words[-1] == "dashboards" else "alertPolicies"
    listed = ["gcloud", *words, "list", "--project", "demo-project"]
    listed += ["--filter", f'displayName="{name}"', "--format", "value(name)"]
    found = f"projects/demo-project/{kind}/{found_id}"
    return [listed, ["gcloud", *words, "delete", found, *PROJECT_QUIET]]


def test_teardown_deletes_repository_and_bucket_only_when_asked(stubs):
    result = run_script(stubs, "teardown", "--delete-repository", "--delete-bucket")
    assert result.returncode == 0, result.stderr
    assert recorded(stubs)[-2:] == [
        _delete("artifacts", "repositories", "delete", "image-services", where="--location"),
        ["gcloud", "storage", "rm", "--recursive", "gs://demo-images", "--project", "demo-project"],
    ]
    assert "bucket gs://demo-images and its objects" in result.stdout


def test_deploy_runs_exactly_what_its_dry_run_prints(stubs, bentoml_home):
    env = {**stubs, "BENTOML_HOME": str(bentoml_home)}
    dry = run_script(
        env, "deploy", "--dry-run", "--setup", "--tag", "t1", "--invoker", "user:a@b.c"
    )
    real = run_script(env, "deploy", "--setup", "--tag", "t1", "--invoker", "user:a@b.c")
    assert real.returncode == 0, real.stderr[-3000:]
    commands = recorded(env)
    expected = [cmd for cmd in printed(dry.stdout) if cmd[0] != "scripts/build"]
    built = {c[2].split(":")[0]: c[2] for c in commands if c[1:2] == ["containerize"]}
    expected = [
        [built[arg.split(":")[0]] if arg.endswith(":BUILT_TAG") else arg for arg in cmd]
        for cmd in expected
    ]
    assert [Path(c[0]).name for c in commands] == [Path(c[0]).name for c in expected]
    assert [c[1:] for c in commands] == [c[1:] for c in expected]

    deploys = {c[3]: c for c in commands if c[:3] == ["gcloud", "run", "deploy"]}
    assert list(deploys) == ["preprocess", "classify"]
    classify = deploys["classify"]
    assert classify[classify.index("--image") + 1] == f"{REGISTRY}/classify:t1"
    assert "--no-allow-unauthenticated" in classify
    assert classify[classify.index("--service-account") + 1].startswith("classify-sa@")
    assert "httpGet.path=/readyz" in classify[classify.index("--startup-probe") + 1]
    # min-instances only when MIN_INSTANCES says so: a redeploy keeps what an operator set
    assert "--min-instances" not in classify
    roles = {
        (c[c.index("--member") + 1], c[c.index("--role") + 1]) for c in commands if "--role" in c
    }
    assert (
        "serviceAccount:preprocess-sa@demo-project.iam.gserviceaccount.com",
        "roles/storage.objectCreator",
    ) in roles
    assert (
        "serviceAccount:classify-sa@demo-project.iam.gserviceaccount.com",
        "roles/storage.objectViewer",
    ) in roles
    assert ("user:a@b.c", "roles/run.invoker") in roles
    assert "https://classify-abc123-uc.a.run.app" in real.stdout


@pytest.mark.parametrize("runtime", ALL_RUNTIMES)
def test_each_runtime_deploys_its_bento_sized_from_measurements(stubs, runtime):
    """The classify Bento is built for the runtime; --memory and the startup probe of both
    services come from scripts/sizing.json (the measurement of the runtime's image)."""
    bento = runtime_spec(runtime).image
    result = run_script({**stubs, "CLASSIFY_RUNTIME": runtime}, "deploy", "--dry-run")
    assert result.returncode == 0, result.stderr
    commands = printed(result.stdout)
    assert ["scripts/build", "--no-export", "--runtime", runtime] in commands
    assert [bento + ":BUILT_TAG"] == [c[2] for c in commands if c[1:2] == ["containerize"]][:1]
    for service, name in (("classify", bento), ("preprocess", "preprocess")):
        deploy = next(c for c in commands if c[:4] == ["gcloud", "run", "deploy", service])
        assert deploy[deploy.index("--memory") + 1] == f"{memory_mib(name)}Mi"
        probe = deploy[deploy.index("--startup-probe") + 1]
        assert probe == startup_probe(name)
        threshold = int(probe.rsplit("failureThreshold=", 1)[1])
        assert threshold * PROBE_PERIOD_S > measured()["images"][name]["cold_start_s"]


def test_events_and_the_job_are_created_with_least_privilege(stubs):
    result = run_script(stubs, "deploy", "--dry-run", "--events", "--job")
    assert result.returncode == 0, result.stderr
    commands = printed(result.stdout)
    trigger = next(c for c in commands if c[1:4] == ["eventarc", "triggers", "create"])
    assert trigger[trigger.index("--destination-run-path") + 1] == "/events/storage"
    assert trigger[trigger.index("--destination-run-service") + 1] == "classify"
    filters = [trigger[i + 1] for i, arg in enumerate(trigger) if arg == "--event-filters"]
    assert filters == ["type=google.cloud.storage.object.v1.finalized", "bucket=demo-images"]
    events_sa = "serviceAccount:classify-events-sa@demo-project.iam.gserviceaccount.com"
    assert trigger[trigger.index("--service-account") + 1] == events_sa.split(":")[1]
    roles = {
        (c[c.index("--member") + 1], c[c.index("--role") + 1]) for c in commands if "--role" in c
    }
    assert (events_sa, "roles/eventarc.eventReceiver") in roles
    assert (events_sa, "roles/run.invoker") in roles
    publisher = [m for m, role in roles if role == "roles/pubsub.publisher"]
    assert any(m.endswith("@gs-project-accounts.iam.gserviceaccount.com") for m in publisher)
    # classify creates or replaces objects only under the results prefix
    writer = [c for c in commands if "roles/storage.objectUser" in c]
    assert writer and all(
        c[c.index("--member") + 1].startswith("serviceAccount:classify-sa@") for c in writer
    )
    condition = writer[0][writer[0].index("--condition") + 1]
    assert 'startsWith("projects/_/buckets/demo-images/objects/results/")' in condition
    job = next(c for c in commands if c[1:4] == ["run", "jobs", "deploy"])
    assert job[job.index("--command") + 1] == "classify-bucket"
    assert job[job.index("--args") + 1] == "gs://demo-images/uploads/"
    # its own measured peak: a task, not the service (tests/deploy/test_memory.py)
    assert job[job.index("--memory") + 1] == f"{memory_mib('classify-job')}Mi"
    # every task of an execution at once: `run-job --tasks 8` runs 8, not the deploy's 4
    assert job[job.index("--parallelism") + 1] == "0"
    assert job[job.index("--service-account") + 1].startswith("classify-sa@")
    assert recorded(stubs) == []


def test_run_job_executes_the_job_on_a_prefix(stubs):
    flags = ["--tasks", "8", "--task-timeout", "7200", "--wait"]
    result = run_script(stubs, "run-job", "gs://demo-images/2019/", *flags)
    assert result.returncode == 0, result.stderr
    execute = ["gcloud", "run", "jobs", "execute", "classify-bucket"]
    where = ["--region", "europe-west1", "--project", "demo-project"]
    assert recorded(stubs) == [[*execute, *where, "--args", "gs://demo-images/2019/", *flags]]
    assert run_script(stubs, "run-job").returncode == 2  # no prefix: a usage error


def test_sizing_rule():
    """--memory: the peak over 70%, in 256 MiB steps, at least 512 MiB; the startup window:
    10x the cold start, at least 30 s, at most Cloud Run's 240 s."""
    figures = {
        "memory": {"a": {"peak_mib": 700}, "b": {"peak_mib": 100}, "c": {"peak_mib": 1400}},
        "images": {
            "a": {"cold_start_s": 4.1},
            "b": {"cold_start_s": 1.0},
            "c": {"cold_start_s": 60},
        },
    }
    assert [memory_mib(name, figures) for name in "abc"] == [1024, 512, 2048]
    assert [startup_window_s(name, figures) for name in "abc"] == [42, 30, 240]
    assert startup_probe("a", figures).endswith(
        "periodSeconds=2,timeoutSeconds=2,failureThreshold=21"
    )


def test_unknown_classify_runtime_is_a_clear_error(stubs):
    result = run_script({**stubs, "CLASSIFY_RUNTIME": "caffe"}, "deploy", "--dry-run")
    assert result.returncode == 2 and "CLASSIFY_RUNTIME must be one of" in result.stderr
    assert recorded(stubs) == []


def test_missing_project_is_a_clear_error(stubs):
    env = {key: value for key, value in stubs.items() if key not in ("PROJECT_ID", "BUCKET")}
    result = run_script(env, "teardown")
    assert result.returncode == 2 and "PROJECT_ID is not set" in result.stderr
    assert recorded(env) == [["gcloud", "config", "get-value", "project"]]


ANSI = re.compile(r"\x1b\[[0-9;]*m")


@cache
def gcloud_tree() -> dict:
    """gcloud's own static tree of every command and flag (what its shell completion reads),
    from the installed SDK: one file read instead of a `gcloud ... --help` per command."""
    sdk = Path(shutil.which("gcloud") or "gcloud").resolve().parents[1]
    completions = sdk / "data" / "cli" / "gcloud_completions.py"
    return runpy.run_path(str(completions))["STATIC_COMPLETION_CLI_TREE"]


def command_node(args: list[str]) -> tuple[list[str], dict]:
    """The longest run of leading words that name a command, and that command's node."""
    words, node = [], gcloud_tree()
    for word in args:
        if word.startswith("-") or word not in node["commands"]:
            break
        words, node = [*words, word], node["commands"][word]
    return words, node


def gcloud_help(*words: str) -> str:
    result = subprocess.run(
        ["gcloud", *words, "--help"],
        capture_output=True,
        text=True,
        env={**os.environ, "CLOUDSDK_CORE_DISABLE_PROMPTS": "1", "PAGER": "cat"},
        timeout=60,
    )
    return ANSI.sub("", result.stdout) if result.returncode == 0 else ""


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed")
def test_every_gcloud_subcommand_and_flag_exists(stubs):
    everything = ("--events", "--job", "--metrics", "--traces", "--monitoring", "--github", "a/b")
    deploy = run_script(
        stubs, "deploy", "--dry-run", "--setup", "--invoker", "user:me@x.org", *everything
    )
    teardown = run_script(stubs, "teardown", "--dry-run", "--delete-bucket", "--delete-repository")
    job = run_script(stubs, "run-job", "gs://demo-images/uploads/", "--tasks", "3", "--dry-run")
    check = run_script(stubs, "check", "--dry-run", "--events", "--job")
    rollout = [
        run_script(stubs, "rollout", *args, "--dry-run")
        for args in (
            ["deploy"],
            ["compare", "photos/"],
            ["promote", "--percent", "5"],
            ["promote"],
            ["rollback"],
        )
    ]
    assert all(step.returncode == 0 for step in rollout), [step.stderr for step in rollout]
    output = deploy.stdout + teardown.stdout + job.stdout + check.stdout
    output += "".join(step.stdout for step in rollout)
    commands = [c[1:] for c in printed(output) if c[0] == "gcloud"]
    assert len(commands) >= 20
    global_flags = set(gcloud_tree()["flags"])
    for args in commands:
        path, node = command_node(args)
        assert len(path) >= 2 and not node["commands"], f"not a gcloud command: {args}"
        known = set(node["flags"]) | global_flags
        # a boolean flag also has its --no- form
        known |= {f"--no-{f[2:]}" for f, kind in node["flags"].items() if kind == "bool"}
        for flag in (a.split("=")[0] for a in args if a.startswith("--")):
            assert flag in known, f"gcloud {' '.join(path)}: no {flag}"


@pytest.mark.skipif(shutil.which("gcloud") is None, reason="the gcloud CLI is not installed")
def test_the_completion_tree_is_the_installed_cli():
    """The tree the check above reads describes the gcloud that runs: its `run deploy` flags
    are the ones `gcloud run deploy --help` documents."""
    _, node = command_node(["run", "deploy"])
    text = gcloud_help("run", "deploy")
    for flag in ("--startup-probe", "--cpu-boost", "--concurrency", "--memory"):
        assert flag in node["flags"]
        assert re.search(rf"{re.escape(flag)}\b", text), flag


def test_a_candidate_is_classify_alone_with_no_traffic_at_its_tag(stubs):
    """`scripts/rollout deploy` (scripts/deploy --candidate): the serving revision tagged stable,
    then classify alone, tagged, with no traffic; nothing else of the deployment is touched."""
    result = run_script(
        {**stubs, "CLASSIFY_RUNTIME": "openvino-int8"},
        "rollout",
        "deploy",
        "--tag",
        "int8",
        "--dry-run",
    )
    assert result.returncode == 0, result.stderr
    commands = printed(result.stdout)
    assert commands[1][-2:] == ["--update-tags", "stable=classify-OLD"]
    deploys = [c for c in commands if c[:3] == ["gcloud", "run", "deploy"]]
    assert [c[3] for c in deploys] == ["classify"]
    assert deploys[0][deploys[0].index("--tag") + 1] == "int8" and "--no-traffic" in deploys[0]
    assert deploys[0][deploys[0].index("--memory") + 1] == f"{memory_mib('classify-openvino')}Mi"
    assert not [c for c in commands if "preprocess:BUILT_TAG" in c or "eventarc" in c]
    mixed = run_script(stubs, "deploy", "--candidate", "x", "--events", "--dry-run")
    assert mixed.returncode == 2 and "classify alone" in mixed.stderr


def test_services_and_the_job_know_their_project_for_log_traces(stubs):
    """Log lines name their trace `projects/PROJECT/traces/ID` (common/logs.py): every service
    and the job get GOOGLE_CLOUD_PROJECT."""
    deploy = run_script(stubs, "deploy", "--dry-run", "--job")
    assert deploy.returncode == 0, deploy.stderr
    commands = printed(deploy.stdout)
    deploys = [c for c in commands if c[:3] == ["gcloud", "run", "deploy"]]
    deploys += [c for c in commands if c[:4] == ["gcloud", "run", "jobs", "deploy"]]
    assert len(deploys) == 3
    for command in deploys:
        env = command[command.index("--update-env-vars") + 1]
        assert "GOOGLE_CLOUD_PROJECT=demo-project" in env.split(","), command


def test_metrics_put_the_prometheus_sidecar_beside_each_service(stubs):
    """`--metrics`: each service is the ingress container on 8080 with the Managed Service for
    Prometheus sidecar after it, scraping with deploy/monitoring/rungmp-config.yaml (mounted
    from Secret Manager), on instance-based billing; the service accounts may write metrics."""
    deploy = run_script(stubs, "deploy", "--dry-run", "--metrics")
    assert deploy.returncode == 0, deploy.stderr
    commands = printed(deploy.stdout)
    config = yaml.safe_load((REPO / "deploy" / "monitoring" / "rungmp-config.yaml").read_text())
    assert config["kind"] == "RunMonitoring"
    (endpoint,) = config["spec"]["endpoints"]
    assert (endpoint["port"], endpoint["path"]) == (8080, "/metrics")
    secret = ["gcloud", "secrets", "create", "rungmp-config", "--data-file"]
    assert any(c[:5] == secret and c[5].endswith("rungmp-config.yaml") for c in commands)
    deploys = [c for c in commands if c[:3] == ["gcloud", "run", "deploy"]]
    assert [c[3] for c in deploys] == ["preprocess", "classify"]
    for command in deploys:
        name = command[3]
        app, sidecar = _containers(command)
        assert app[:4] == ["--container", name, "--port", str(endpoint["port"])]
        assert "--memory" in app and "--startup-probe" in app and "--update-env-vars" in app
        assert sidecar[:2] == ["--container", "collector"]
        assert "cloud-run-gmp-sidecar" in sidecar[sidecar.index("--image") + 1]
        assert sidecar[sidecar.index("--depends-on") + 1] == name
        mounted = sidecar[sidecar.index("--set-secrets") + 1]
        assert mounted == "/etc/rungmp/config.yaml=rungmp-config:latest"
        assert "--no-cpu-throttling" in command[: command.index("--container")]
    for sa in ("preprocess-sa", "classify-sa"):
        member = f"serviceAccount:{sa}@demo-project.iam.gserviceaccount.com"
        granted = {c[c.index("--role") + 1] for c in commands if member in c}
        assert {"roles/monitoring.metricWriter", "roles/secretmanager.secretAccessor"} <= granted


def _containers(command: list[str]) -> list[list[str]]:
    """The flags of each `--container` of a multi-container deploy, in order."""
    starts = [i for i, word in enumerate(command) if word == "--container"]
    return [command[a:b] for a, b in zip(starts, [*starts[1:], len(command)], strict=True)]


def test_traces_turn_on_the_exporter_and_its_permission(stubs):
    deploy = run_script(stubs, "deploy", "--dry-run", "--traces")
    assert deploy.returncode == 0, deploy.stderr
    commands = printed(deploy.stdout)
    for command in (c for c in commands if c[:3] == ["gcloud", "run", "deploy"]):
        env = command[command.index("--update-env-vars") + 1].split(",")
        assert {"OTEL_TRACES_EXPORTER=otlp", "TRACES_TO_GOOGLE=true"} <= set(env)
        assert "--container" not in command  # no sidecar without --metrics
    roles = [c[c.index("--role") + 1] for c in commands if "--role" in c]
    assert roles.count("roles/telemetry.tracesWriter") == 2


def test_monitoring_replaces_dashboard_policies_and_log_metrics_by_name(stubs):
    """Run for real against the recording stub: an existing dashboard or policy of the same name
    (the stub lists one) is deleted before its file is created again; log-based metrics are
    updated when they exist (the stub's describe succeeds)."""
    result = run_script(stubs, "deploy", "--monitoring")
    assert result.returncode == 0, result.stderr
    commands = [c for c in recorded(stubs) if c[0] == "gcloud"]
    monitoring = REPO / "deploy" / "monitoring"
    replaced = [(["monitoring", "dashboards"], monitoring / "dashboard.json")]
    policies = ["alpha", "monitoring", "policies"]
    replaced += [(policies, path) for path in sorted(monitoring.glob("policies/*.json"))]
    for words, file in replaced:
        name = json.loads(file.read_text())["displayName"]
        listed = next(i for i, c in enumerate(commands) if f'displayName="{name}"' in c)
        deleted, created = commands[listed + 1], commands[listed + 2]
        assert deleted[1:] == [*words, "delete", deleted[len(words) + 2], *PROJECT_QUIET]
        assert created[1 : len(words) + 2] == [*words, "create"]
        assert str(file.relative_to(REPO)) in created
    updated = {c[4]: c for c in commands if c[:4] == ["gcloud", "logging", "metrics", "update"]}
    for path in sorted(monitoring.glob("log-metrics/*.yaml")):
        command = updated[yaml.safe_load(path.read_text())["name"]]
        assert command[5:7] == ["--config-from-file", str(path.relative_to(REPO))]


PUBSUB_AGENT = "serviceAccount:service-123456789@gcp-sa-pubsub.iam.gserviceaccount.com"
SUBSCRIPTION = "projects/demo-project/subscriptions/eventarc-sub-1"


def _roles(commands: list[list[str]]) -> set[tuple[str, str]]:
    return {
        (c[c.index("--member") + 1], c[c.index("--role") + 1]) for c in commands if "--role" in c
    }


def test_events_trigger_lives_where_the_bucket_does_and_poison_becomes_a_dead_letter(stubs):
    """Run against the recording stub, whose bucket is multi-region EU: the trigger's location
    is `eu`; the trigger's own subscription sends an event to a dead-letter topic (kept by a
    subscription) after EVENTS_MAX_DELIVERIES attempts; Pub/Sub's agent gets what forwarding a
    dead letter needs, and the token role projects from before April 2021 lack."""
    env = {**stubs, "STUB_BUCKET_LOCATION": "EU", "EVENTS_MAX_DELIVERIES": "7"}
    result = run_script(env, "deploy", "--events", "--tag", "t1")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = recorded(env)
    trigger = next(c for c in commands if c[1:4] == ["eventarc", "triggers", "create"])
    assert trigger[trigger.index("--location") + 1] == "eu"
    assert not any(c[1:4] == ["eventarc", "triggers", "update"] for c in commands)
    dead_letter = "classify-events-dead-letter"
    assert ["gcloud", "pubsub", "topics", "create", dead_letter] == next(
        c[:5] for c in commands if c[1:4] == ["pubsub", "topics", "create"]
    )
    kept = next(c for c in commands if c[1:4] == ["pubsub", "subscriptions", "create"])
    assert kept[kept.index("--topic") + 1] == dead_letter
    policy = next(c for c in commands if c[1:4] == ["pubsub", "subscriptions", "update"])
    assert policy[4] == SUBSCRIPTION
    topic = f"projects/demo-project/topics/{dead_letter}"
    assert policy[policy.index("--dead-letter-topic") + 1] == topic
    assert policy[policy.index("--max-delivery-attempts") + 1] == "7"
    roles = _roles(commands)
    assert (PUBSUB_AGENT, "roles/iam.serviceAccountTokenCreator") in roles
    assert (PUBSUB_AGENT, "roles/pubsub.publisher") in roles
    assert (PUBSUB_AGENT, "roles/pubsub.subscriber") in roles
    granted_on = {
        c[4] for c in commands if PUBSUB_AGENT in c and c[2] in ("topics", "subscriptions")
    }
    assert granted_on == {dead_letter, SUBSCRIPTION}
    teardown = run_script(env, "teardown", "--dry-run")
    deletes = [c for c in printed(teardown.stdout) if c[1] == "pubsub"]
    assert [c[2:5] for c in deletes] == [
        ["subscriptions", "delete", dead_letter],
        ["topics", "delete", dead_letter],
    ]


def test_an_existing_trigger_is_updated_and_any_other_failure_stops_the_deploy(stubs):
    for created in ("triggers create", "subscriptions create"):
        Path(stubs["RECORD"]).write_text("")
        exists = {**stubs, "STUB_FAIL_ON": created, "STUB_FAILURE": "ALREADY_EXISTS: it is"}
        result = run_script(exists, "deploy", "--events", "--tag", "t1")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "(already exists)" in result.stdout
        commands = recorded(exists)
        if created == "triggers create":
            update = next(c for c in commands if c[1:4] == ["eventarc", "triggers", "update"])
            assert update[update.index("--destination-run-path") + 1] == "/events/storage"
        else:  # the dead-letter subscription keeps its messages 7 days, as asked
            kept = ["gcloud", "pubsub", "subscriptions", "update", DEAD_LETTER]
            update = next(c for c in commands if c[:5] == kept)
            assert update[update.index("--message-retention-duration") + 1] == "7d"
    Path(stubs["RECORD"]).write_text("")
    denied = {
        **stubs,
        "STUB_FAIL_ON": "service-accounts create",
        "STUB_FAILURE": "PERMISSION_DENIED",
    }
    result = run_script(denied, "deploy", "--setup", "--tag", "t1")
    assert result.returncode != 0
    assert "PERMISSION_DENIED" in result.stderr and "the command above failed" in result.stderr
    # nothing after the failed step ran
    assert not any(c[1:3] == ["run", "deploy"] for c in recorded(denied))


def test_setup_again_after_events_cannot_collide_with_the_conditional_binding(stubs):
    """Unconditional bucket bindings say `--condition None`: once --events/--job added the
    results-only condition, gcloud would otherwise ask which binding is meant."""
    deploy = run_script(stubs, "deploy", "--dry-run", "--setup")
    assert deploy.returncode == 0, deploy.stderr
    bindings = [
        c
        for c in printed(deploy.stdout)
        if c[1:4] == ["storage", "buckets", "add-iam-policy-binding"]
    ]
    assert len(bindings) == 2
    assert all(c[c.index("--condition") + 1] == "None" for c in bindings)


def test_redeploys_keep_what_an_operator_set(stubs):
    """Env vars are updated, not replaced (an operator's WATCH_PREFIX or tracing stays), and
    min-instances is only set when MIN_INSTANCES is (new services start at Cloud Run's 0)."""
    plain = printed(run_script(stubs, "deploy", "--dry-run", "--job").stdout)
    warm = printed(run_script({**stubs, "MIN_INSTANCES": "1"}, "deploy", "--dry-run").stdout)
    deploys = [
        c for c in plain if c[1:3] == ["run", "deploy"] or c[1:4] == ["run", "jobs", "deploy"]
    ]
    assert len(deploys) == 3
    for command in deploys:
        assert "--set-env-vars" not in command and "--update-env-vars" in command
        assert "--min-instances" not in command
    for command in (c for c in warm if c[1:3] == ["run", "deploy"]):
        assert command[command.index("--min-instances") + 1] == "1"


def test_github_sets_up_keyless_deploys_for_that_repository_only(stubs):
    """`--github OWNER/REPO`: the provider admits that repository's tokens only (the attribute
    condition), only its workflows may impersonate the deployer, and the deployer may deploy
    and act as the runtime accounts; the repository variables the workflow reads are printed
    with real values (the stub's project number)."""
    result = run_script(stubs, "deploy", "--github", "acme/photos", "--tag", "t1")
    assert result.returncode == 0, result.stderr[-3000:]
    commands = recorded(stubs)
    provider = next(c for c in commands if c[3:5] == ["providers", "create-oidc"])
    assert (
        provider[provider.index("--attribute-condition") + 1]
        == "assertion.repository == 'acme/photos'"
    )
    assert (
        provider[provider.index("--issuer-uri") + 1]
        == "https://token.actions.githubusercontent.com"
    )
    mapping = provider[provider.index("--attribute-mapping") + 1]
    assert "attribute.repository=assertion.repository" in mapping.split(",")
    deployer = "serviceAccount:github-deployer-sa@demo-project.iam.gserviceaccount.com"
    roles = _roles(commands)
    assert {(deployer, "roles/run.admin"), (deployer, "roles/artifactregistry.writer")} <= roles
    acts_as = [c[4] for c in commands if deployer in c and "roles/iam.serviceAccountUser" in c]
    assert sorted(acts_as) == [
        "classify-sa@demo-project.iam.gserviceaccount.com",
        "preprocess-sa@demo-project.iam.gserviceaccount.com",
    ]
    pool = "projects/123456789/locations/global/workloadIdentityPools/github"
    assert (
        f"principalSet://iam.googleapis.com/{pool}/attribute.repository/acme/photos",
        "roles/iam.workloadIdentityUser",
    ) in roles
    lines = [line.split() for line in result.stdout.splitlines()]
    variables = {words[3]: words[7] for words in lines if words[:3] == ["gh", "variable", "set"]}
    assert variables["GCP_WORKLOAD_IDENTITY_PROVIDER"] == f"{pool}/providers/github"
    assert variables["GCP_DEPLOY_SERVICE_ACCOUNT"] == deployer.split(":")[1]
    workflow = (REPO / ".github" / "workflows" / "deploy.yml").read_text()
    assert all(f"vars.{name}" in workflow for name in variables)
    refused = run_script(stubs, "deploy", "--dry-run", "--github", "not a repo")
    assert refused.returncode == 2 and "OWNER/REPO" in refused.stderr


CURL = """#!/usr/bin/env bash
printf 'curl' >> "$RECORD"
printf ' %q' "$@" >> "$RECORD"
printf '\\n' >> "$RECORD"
out=""
prev=""
for arg in "$@"; do [ "$prev" = -o ] && out=$arg; prev=$arg; done
url=${*: -3:1}
case "$url" in
  */preprocess) echo '{"gcs_path": "gs://demo-images/preprocessed/c.bmp"}' > "$out" ;;
  */classify)
    [ "${STUB_CURL_FAIL:-}" = classify ] && { echo "curl: (22) 503" >&2; exit 22; }
    echo '{"label": "x"}' > "$out" ;;
esac
"""


@pytest.fixture
def check_stubs(stubs: dict[str, str]) -> dict[str, str]:
    curl = Path(stubs["PATH"].split(":")[0]) / "curl"
    curl.write_text(CURL)
    curl.chmod(0o755)
    return stubs


def test_check_calls_both_services_then_the_event_and_the_job(check_stubs):
    """`scripts/check --events --job` against the recording stubs: both services called with
    the caller's ID token (read from a file: no printed command shows it), a photo uploaded
    under the watched prefix, its result awaited where the results layout puts it, a one-task
    job on its folder."""
    dry = run_script(check_stubs, "check", "--dry-run", "--events", "--job")
    assert dry.returncode == 0, dry.stderr
    assert recorded(check_stubs) == []
    result = run_script(check_stubs, "check", "--events", "--job")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "check passed" in result.stdout
    commands = recorded(check_stubs)
    calls = [c for c in commands if c[0] == "curl"]
    assert [c[-3].rsplit("/", 1)[1] for c in calls] == ["preprocess", "classify"]
    assert all(c[c.index("-H") + 1].startswith("@") for c in calls)
    assert "Bearer" not in result.stdout
    assert '"gs://demo-images/preprocessed/c.bmp"' in calls[1][calls[1].index("-d") + 1]
    upload = next(c for c in commands if c[1:3] == ["storage", "cp"] and c[3].endswith("check.jpg"))
    folder = upload[4].removesuffix("check.jpg")
    assert folder.startswith("gs://demo-images/uploads/_check/")
    awaited = next(c for c in commands if c[1:3] == ["storage", "cp"] and c[3].endswith(".json"))
    assert awaited[3] == folder.replace("/uploads/", "/results/uploads/") + "check.jpg.json"
    job = next(c for c in commands if c[1:4] == ["run", "jobs", "execute"])
    assert job[job.index("--args") + 1] == folder and job[job.index("--tasks") + 1] == "1"


def test_a_failed_check_says_what_failed_and_where_to_look(check_stubs):
    env = {**check_stubs, "STUB_CURL_FAIL": "classify"}
    result = run_script(env, "check")
    assert result.returncode == 1
    assert "FAILED: /classify did not answer 200" in result.stderr
    assert "look: gcloud run services describe classify" in result.stderr
    logs = next(c for c in recorded(env) if c[1:3] == ["logging", "read"])
    assert 'resource.labels.service_name="classify"' in logs[3] and "severity>=ERROR" in logs[3]
    if shutil.which("gcloud"):  # the flags of a command only a failure prints exist too
        _, node = command_node(logs[1:])
        assert {"--limit", "--freshness"} <= set(node["flags"])
