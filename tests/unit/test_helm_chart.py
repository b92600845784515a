"""The Helm chart (helm/avgate) renders hardened, valid manifests.

Every `ci/*-values.yaml` (the files chart-testing lints) is linted and rendered
with the project's helm binary; the rendered objects are checked for what a
production deployment of avgate must never lose: non-root read-only
containers, native gRPC probes, the migration hook, the production profile,
pinned images, and validity against the Kubernetes schemas.
"""

from __future__ import annotations

import functools
import pathlib
import subprocess
from collections.abc import Iterator
from typing import Any

import kubernetes_validate
import pytest
import yaml

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]
CHART = REPO_ROOT / "helm" / "avgate"
HELM = REPO_ROOT / ".tools" / "bin" / "helm"
KUBERNETES_VERSION = "1.30.0"
RELEASE = "avgate-test"

VALUES_FILES = sorted((CHART / "ci").glob("*-values.yaml"))
each_values_file = pytest.mark.parametrize("values_file", VALUES_FILES, ids=[p.stem for p in VALUES_FILES])

# The avgate processes, their gRPC and metrics ports (the chart's defaults)
# and the module each runs.
PROCESSES = {
    "gateway": (50051, 9460, "gateway"),
    "identity": (50061, 9461, "services.identity"),
    "screening": (50062, 9462, "services.screening"),
    "reporting": (50063, 9463, "services.reporting"),
    "complaints": (50064, 9464, "services.complaints"),
}
DATABASE_SECRET_KEYS = {f"{name.upper()}_DATABASE_URL": f"{name}-url" for name in PROCESSES}
AVGATE_COMPONENTS = {*PROCESSES, "migrate"}
POD_KINDS = {"Deployment", "Job"}
DRAIN_SECONDS = 20


def helm(*args: str) -> str:
    if not HELM.is_file():
        pytest.fail(
            f"helm not found at {HELM.relative_to(REPO_ROOT)}: run `make test` (which installs the tools) "
            "or scripts/install-tools.sh helm",
            pytrace=False,
        )
    result = subprocess.run([str(HELM), *args], cwd=REPO_ROOT, capture_output=True, text=True, timeout=120, check=False)
    if result.returncode != 0:
        pytest.fail(f"helm {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}", pytrace=False)
    return result.stdout


@functools.cache
def render(values_file: pathlib.Path) -> tuple[dict[str, Any], ...]:
    output = helm("template", RELEASE, str(CHART), "--values", str(values_file), "--kube-version", KUBERNETES_VERSION)
    return tuple(doc for doc in yaml.safe_load_all(output) if doc)


@functools.cache
def values_of(values_file: pathlib.Path) -> dict[str, Any]:
    return yaml.safe_load(values_file.read_text()) or {}


def app_version() -> str:
    return str(yaml.safe_load((CHART / "Chart.yaml").read_text())["appVersion"])


def of_kind(manifests: tuple[dict[str, Any], ...], *kinds: str) -> list[dict[str, Any]]:
    return [m for m in manifests if m["kind"] in kinds]


def component(manifest: dict[str, Any]) -> str:
    return str(manifest["metadata"]["labels"]["app.kubernetes.io/component"])


def process_deployments(manifests: tuple[dict[str, Any], ...]) -> dict[str, dict[str, Any]]:
    return {component(d): d for d in of_kind(manifests, "Deployment") if component(d) in PROCESSES}


def pod_spec(workload: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = workload["spec"]["template"]["spec"]
    return spec


def containers(
    manifests: tuple[dict[str, Any], ...], *, avgate_only: bool = False
) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """(workload/container name, container, pod spec) for every container of every pod workload."""
    for workload in of_kind(manifests, *POD_KINDS):
        if avgate_only and component(workload) not in AVGATE_COMPONENTS:
            continue
        spec = pod_spec(workload)
        for container in spec.get("initContainers", []) + spec["containers"]:
            yield f"{workload['kind']}/{workload['metadata']['name']}/{container['name']}", container, spec


def avgate_containers(manifests: tuple[dict[str, Any], ...]) -> Iterator[tuple[str, dict[str, Any], dict[str, Any]]]:
    """Containers that run the avgate image: every process and the migration Job (not Triton)."""
    return containers(manifests, avgate_only=True)


def env_of(container: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in container.get("env", [])}


def effective(container: dict[str, Any], spec: dict[str, Any], field: str) -> Any:
    """A security setting as Kubernetes applies it: the container's, else the pod's."""
    return container.get("securityContext", {}).get(field, spec.get("securityContext", {}).get(field))


def port_named(container: dict[str, Any], name: str) -> int:
    return int(next(p["containerPort"] for p in container["ports"] if p["name"] == name))


def test_ci_values_cover_default_and_production() -> None:
    assert {p.name for p in VALUES_FILES} >= {"default-values.yaml", "production-values.yaml"}


class TestChartLint:
    @each_values_file
    def test_chart_lints_cleanly_in_strict_mode(self, values_file: pathlib.Path) -> None:
        output = helm("lint", "--strict", str(CHART), "--values", str(values_file))
        assert "0 chart(s) failed" in output

    def test_chart_lints_with_its_own_defaults(self) -> None:
        helm("lint", str(CHART))


class TestWorkloadSecurity:
    @each_values_file
    def test_every_container_runs_non_root(self, values_file: pathlib.Path) -> None:
        for name, container, spec in containers(render(values_file)):
            assert effective(container, spec, "runAsNonRoot") is True, name
            assert effective(container, spec, "runAsUser") not in (None, 0), name

    @each_values_file
    def test_avgate_containers_run_as_the_image_user(self, values_file: pathlib.Path) -> None:
        for name, container, spec in avgate_containers(render(values_file)):
            assert effective(container, spec, "runAsUser") == 10001, name

    @each_values_file
    def test_every_container_has_a_read_only_root_filesystem(self, values_file: pathlib.Path) -> None:
        for name, container, _ in containers(render(values_file)):
            assert container["securityContext"]["readOnlyRootFilesystem"] is True, name

    @each_values_file
    def test_every_container_drops_all_capabilities_and_cannot_escalate(self, values_file: pathlib.Path) -> None:
        for name, container, _ in containers(render(values_file)):
            context = container["securityContext"]
            assert context["capabilities"]["drop"] == ["ALL"], name
            assert not context["capabilities"].get("add"), name
            assert context["allowPrivilegeEscalation"] is False, name
            assert context.get("privileged", False) is False, name

    @each_values_file
    def test_every_container_uses_the_runtime_default_seccomp_profile(self, values_file: pathlib.Path) -> None:
        for name, container, spec in containers(render(values_file)):
            assert effective(container, spec, "seccompProfile") == {"type": "RuntimeDefault"}, name

    @each_values_file
    def test_every_container_gets_a_writable_tmp_from_an_empty_dir(self, values_file: pathlib.Path) -> None:
        for name, container, spec in containers(render(values_file)):
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            assert "/tmp" in mounts, name
            volume = next(v for v in spec["volumes"] if v["name"] == mounts["/tmp"])
            assert "emptyDir" in volume, name

    @each_values_file
    def test_no_pod_mounts_a_kubernetes_api_token(self, values_file: pathlib.Path) -> None:
        for workload in of_kind(render(values_file), *POD_KINDS):
            assert pod_spec(workload)["automountServiceAccountToken"] is False, workload["metadata"]["name"]

    @each_values_file
    def test_each_process_mounts_only_its_own_signing_key(self, values_file: pathlib.Path) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            volumes = {v["name"]: v for v in pod_spec(deployment)["volumes"]}
            items = volumes["signing-key"]["secret"]["items"]
            # Reporting alone also holds the ledger's tree-head signing key.
            own = [f"{process}.key", "ledger.skey"] if process == "reporting" else [f"{process}.key"]
            assert [item["key"] for item in items] == own
            trusted = volumes["trusted-keys"].get("secret") or volumes["trusted-keys"]["configMap"]
            assert sorted(item["key"] for item in trusted["items"]) == sorted(f"{p}.pub" for p in PROCESSES)
            assert not any(item["key"].endswith(".key") for item in trusted["items"])


class TestGrpcProbes:
    @each_values_file
    def test_every_process_runs_as_its_own_deployment(self, values_file: pathlib.Path) -> None:
        deployments = process_deployments(render(values_file))
        assert set(deployments) == set(PROCESSES)
        for process, deployment in deployments.items():
            (container,) = pod_spec(deployment)["containers"]
            assert container["command"] == ["python", "-m", PROCESSES[process][2]]

    @each_values_file
    def test_every_process_has_grpc_liveness_and_readiness_probes_on_its_grpc_port(
        self, values_file: pathlib.Path
    ) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            (container,) = pod_spec(deployment)["containers"]
            grpc_port = PROCESSES[process][0]
            assert port_named(container, "grpc") == grpc_port, process
            for probe in ("livenessProbe", "readinessProbe", "startupProbe"):
                assert container[probe]["grpc"]["port"] == grpc_port, f"{process} {probe}"

    @each_values_file
    def test_every_process_listens_where_the_probes_and_services_reach_it(self, values_file: pathlib.Path) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            env = env_of(pod_spec(deployment)["containers"][0])
            assert env[f"{process.upper()}_GRPC_HOST"]["value"] in {"0.0.0.0", "[::]"}, process
            assert env[f"{process.upper()}_GRPC_PORT"]["value"] == str(PROCESSES[process][0]), process

    @each_values_file
    def test_grace_period_outlasts_the_pre_stop_pause_and_the_drain(self, values_file: pathlib.Path) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            spec = pod_spec(deployment)
            container = spec["containers"][0]
            pause = 0
            if "lifecycle" in container:
                command = container["lifecycle"]["preStop"]["exec"]["command"]
                pause = int(command[-1].rsplit("(", 1)[1].rstrip(")"))
            drain = float(env_of(container)["AVGATE_SHUTDOWN_GRACE_SECONDS"]["value"])
            assert drain >= DRAIN_SECONDS, process
            assert spec["terminationGracePeriodSeconds"] > pause + drain, process


class TestMetricsScraping:
    @each_values_file
    def test_every_process_is_scraped_on_its_metrics_port(self, values_file: pathlib.Path) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            annotations = deployment["spec"]["template"]["metadata"]["annotations"]
            metrics_port = PROCESSES[process][1]
            assert annotations["prometheus.io/scrape"] == "true", process
            assert annotations["prometheus.io/port"] == str(metrics_port), process
            assert annotations["prometheus.io/path"] == "/metrics", process
            container = pod_spec(deployment)["containers"][0]
            assert port_named(container, "metrics") == metrics_port, process
            assert env_of(container)[f"{process.upper()}_METRICS_PORT"]["value"] == str(metrics_port), process


class TestServiceWiring:
    @each_values_file
    def test_gateway_targets_are_the_services_grpc_endpoints(self, values_file: pathlib.Path) -> None:
        manifests = render(values_file)
        services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
        gateway = pod_spec(process_deployments(manifests)["gateway"])["containers"][0]
        for upstream in ("identity", "screening", "reporting", "complaints"):
            host, port = env_of(gateway)[f"GATEWAY_{upstream.upper()}_TARGET"]["value"].rsplit(":", 1)
            service = services[host]
            assert service["spec"]["selector"]["app.kubernetes.io/component"] == upstream
            assert int(port) in [p["port"] for p in service["spec"]["ports"]]

    @each_values_file
    def test_services_hand_incidents_to_reportings_grpc_endpoint(self, values_file: pathlib.Path) -> None:
        manifests = render(values_file)
        services = {s["metadata"]["name"]: s for s in of_kind(manifests, "Service")}
        deployments = process_deployments(manifests)
        for process in ("identity", "screening", "complaints"):
            env = env_of(pod_spec(deployments[process])["containers"][0])
            host, port = env[f"{process.upper()}_REPORTING_TARGET"]["value"].rsplit(":", 1)
            service = services[host]
            assert service["spec"]["selector"]["app.kubernetes.io/component"] == "reporting", process
            assert int(port) in [p["port"] for p in service["spec"]["ports"]], process

    @each_values_file
    def test_each_process_reads_its_database_url_from_the_pre_created_secret(self, values_file: pathlib.Path) -> None:
        manifests = render(values_file)
        secret = values_of(values_file)["database"]["existingSecret"]
        assert secret not in {s["metadata"]["name"] for s in of_kind(manifests, "Secret")}
        for process, deployment in process_deployments(manifests).items():
            env = env_of(pod_spec(deployment)["containers"][0])
            reference = env[f"{process.upper()}_DATABASE_URL"]["valueFrom"]["secretKeyRef"]
            assert reference == {"name": secret, "key": f"{process}-url"}

    @each_values_file
    def test_the_gateway_service_is_cluster_internal_unless_configured(self, values_file: pathlib.Path) -> None:
        manifests = render(values_file)
        configured = values_of(values_file).get("gateway", {}).get("service", {}).get("type", "ClusterIP")
        gateway = next(s for s in of_kind(manifests, "Service") if component(s) == "gateway")
        assert gateway["spec"]["type"] == configured
        for service in of_kind(manifests, "Service"):
            if component(service) != "gateway":
                assert service["spec"]["type"] == "ClusterIP", service["metadata"]["name"]


class TestMigrationJob:
    @each_values_file
    def test_migrations_run_as_a_pre_install_and_pre_upgrade_hook(self, values_file: pathlib.Path) -> None:
        (job,) = of_kind(render(values_file), "Job")
        annotations = job["metadata"]["annotations"]
        assert set(annotations["helm.sh/hook"].split(",")) == {"pre-install", "pre-upgrade"}
        assert "before-hook-creation" in annotations["helm.sh/hook-delete-policy"].split(",")
        (container,) = pod_spec(job)["containers"]
        assert container["command"] == ["avgate", "db", "migrate"]
        assert pod_spec(job)["restartPolicy"] == "Never"

    @each_values_file
    def test_migrations_get_every_database_url_from_the_pre_created_secret(self, values_file: pathlib.Path) -> None:
        manifests = render(values_file)
        (job,) = of_kind(manifests, "Job")
        secret = values_of(values_file)["database"]["existingSecret"]
        env = env_of(pod_spec(job)["containers"][0])
        for variable, key in DATABASE_SECRET_KEYS.items():
            assert env[variable]["valueFrom"]["secretKeyRef"] == {"name": secret, "key": key}

    @each_values_file
    def test_migrations_use_no_service_account_the_release_creates(self, values_file: pathlib.Path) -> None:
        # A pre-install hook runs before the chart's ServiceAccounts exist.
        manifests = render(values_file)
        (job,) = of_kind(manifests, "Job")
        created = {sa["metadata"]["name"] for sa in of_kind(manifests, "ServiceAccount")}
        assert pod_spec(job).get("serviceAccountName", "default") not in created


class TestProductionProfile:
    @each_values_file
    def test_every_workload_runs_the_production_profile(self, values_file: pathlib.Path) -> None:
        checked = 0
        for name, container, _ in avgate_containers(render(values_file)):
            env = env_of(container)
            assert env["AVGATE_ENV"]["value"] == "production", name
            assert env["AVGATE_GENERATE_KEYS"]["value"] == "false", name
            checked += 1
        assert checked == len(PROCESSES) + 1

    @each_values_file
    def test_the_gateway_accepts_no_development_api_keys(self, values_file: pathlib.Path) -> None:
        gateway = pod_spec(process_deployments(render(values_file))["gateway"])["containers"][0]
        assert env_of(gateway)["GATEWAY_DEV_API_KEYS"]["value"] == "false"

    @each_values_file
    def test_each_process_signs_with_a_mounted_key_and_trusts_mounted_public_keys(
        self, values_file: pathlib.Path
    ) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            container = pod_spec(deployment)["containers"][0]
            env = env_of(container)
            mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
            assert env["AVGATE_SIGNING_KEY_FILE"]["value"] == f"{mounts['signing-key']}/{process}.key"
            assert env["AVGATE_TRUSTED_KEYS_DIR"]["value"] == mounts["trusted-keys"]
            assert env["AVGATE_STATE_DIR"]["value"].startswith("/tmp/")


class TestImages:
    @each_values_file
    def test_no_container_uses_the_latest_tag(self, values_file: pathlib.Path) -> None:
        for name, container, _ in containers(render(values_file)):
            image = container["image"]
            if "@sha256:" in image:
                continue
            _, _, tag = image.rpartition("/")[2].partition(":")
            assert tag, f"{name} has an untagged image {image}"
            assert tag != "latest", f"{name} uses {image}"

    @each_values_file
    def test_avgate_image_defaults_to_the_chart_app_version(self, values_file: pathlib.Path) -> None:
        image = values_of(values_file).get("image", {})
        expected = f"@{image['digest']}" if image.get("digest") else f":{image.get('tag') or app_version()}"
        for name, container, _ in avgate_containers(render(values_file)):
            assert container["image"].endswith(expected), name


class TestKubernetesSchemas:
    @each_values_file
    def test_rendered_manifests_validate_against_the_kubernetes_schemas(self, values_file: pathlib.Path) -> None:
        problems = []
        for manifest in render(values_file):
            name = f"{manifest['kind']}/{manifest['metadata']['name']}"
            try:
                kubernetes_validate.validate(manifest, KUBERNETES_VERSION, strict=True)
            except kubernetes_validate.ValidationError as exc:
                path = ".".join(str(part) for part in exc.path)
                problems.append(f"{name}: {path}: {exc.message}")
            except kubernetes_validate.SchemaNotFoundError as exc:
                problems.append(f"{name}: {exc.message}")
        assert not problems, "\n".join(problems)


class TestLedger:
    @each_values_file
    def test_reporting_runs_the_sequencer_as_its_own_role_with_a_named_log(self, values_file: pathlib.Path) -> None:
        reporting = process_deployments(render(values_file))["reporting"]
        env = {e["name"]: e for e in reporting["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["REPORTING_SEQUENCER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "sequencer-url"
        assert not env["REPORTING_LEDGER_ORIGIN"]["value"].startswith("avgate.local/")
        assert env["REPORTING_LEDGER_SIGNING_KEY_FILE"]["value"].endswith("/ledger.skey")

    @each_values_file
    def test_reporting_names_an_authority_for_every_department(self, values_file: pathlib.Path) -> None:
        import json

        from services.reporting.config import ReportingSettings

        reporting = process_deployments(render(values_file))["reporting"]
        env = {e["name"]: e for e in reporting["spec"]["template"]["spec"]["containers"][0]["env"]}
        authorities = json.loads(env["REPORTING_AUTHORITIES"]["value"])
        settings = ReportingSettings(authorities=authorities)
        assert set(settings.authority_specs()) == set(authorities)  # every spec parses
        assert not [p for p in settings.local_stand_ins() if "REPORTING_AUTHORITIES" in p]

    @each_values_file
    def test_migrations_reach_the_ledger_schema_as_its_owner(self, values_file: pathlib.Path) -> None:
        job = next(w for w in of_kind(render(values_file), "Job"))
        env = {e["name"]: e for e in job["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["LEDGER_DATABASE_URL"]["valueFrom"]["secretKeyRef"]["key"] == "ledger-url"


class TestEvidenceStore:
    @each_values_file
    def test_reporting_keeps_evidence_on_a_persistent_volume(self, values_file: pathlib.Path) -> None:
        for process, deployment in process_deployments(render(values_file)).items():
            spec = pod_spec(deployment)
            volumes = {v["name"]: v for v in spec["volumes"]}
            if process != "reporting":
                assert "evidence" not in volumes and "evidence-kek" not in volumes, process
                continue
            container = spec["containers"][0]
            directory = env_of(container)["REPORTING_EVIDENCE_DIR"]["value"]
            (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
            assert mount["name"] == "evidence" and "subPath" not in mount
            assert not directory.startswith("/tmp")
            claim = values_of(values_file).get("reporting", {}).get("evidence", {}).get("existingClaim")
            assert volumes["evidence"]["persistentVolumeClaim"]["claimName"] == (claim or "avgate-evidence")

    @each_values_file
    def test_reporting_reads_its_key_encryption_keys_from_a_read_only_secret(self, values_file: pathlib.Path) -> None:
        reporting = pod_spec(process_deployments(render(values_file))["reporting"])
        container = reporting["containers"][0]
        kek_file = pathlib.PurePosixPath(env_of(container)["REPORTING_EVIDENCE_KEK_FILE"]["value"])
        mount = next(m for m in container["volumeMounts"] if m["name"] == "evidence-kek")
        assert mount["mountPath"] == str(kek_file.parent)
        assert mount["readOnly"] is True
        secret = next(v for v in reporting["volumes"] if v["name"] == "evidence-kek")["secret"]
        assert [item["path"] for item in secret["items"]] == [kek_file.name]
        values = values_of(values_file)
        expected = values.get("reporting", {}).get("evidence", {}).get("kekSecret") or values["keys"]["existingSecret"]
        assert secret["secretName"] == expected

    @each_values_file
    def test_the_rendered_evidence_settings_parse_and_are_no_local_stand_ins(self, values_file: pathlib.Path) -> None:
        from services.reporting.config import ReportingSettings

        env = env_of(pod_spec(process_deployments(render(values_file))["reporting"])["containers"][0])
        settings = ReportingSettings(
            evidence_dir=env["REPORTING_EVIDENCE_DIR"]["value"],
            evidence_kek_file=env["REPORTING_EVIDENCE_KEK_FILE"]["value"],
            evidence_retention=env["REPORTING_EVIDENCE_RETENTION"]["value"],
            evidence_max_bytes=env["REPORTING_EVIDENCE_MAX_BYTES"]["value"],
        )
        assert settings.evidence_retention.days >= 365
        assert not [p for p in settings.local_stand_ins() if "EVIDENCE" in p]

    @each_values_file
    def test_export_bundles_live_on_the_evidence_volume_where_every_replica_serves_them(
        self, values_file: pathlib.Path
    ) -> None:
        from services.reporting.config import ReportingSettings

        container = pod_spec(process_deployments(render(values_file))["reporting"])["containers"][0]
        env = env_of(container)
        directory = env["REPORTING_EXPORT_DIR"]["value"]
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == directory]
        assert mount["name"] == "evidence" and mount["subPath"] == "exports"
        settings = ReportingSettings(export_dir=directory, export_ttl_hours=env["REPORTING_EXPORT_TTL_HOURS"]["value"])
        assert not [p for p in settings.local_stand_ins() if "EXPORT" in p]


class TestIdentityVaultKeys:
    @each_values_file
    def test_identity_reads_its_personal_data_keys_from_a_read_only_secret(self, values_file: pathlib.Path) -> None:
        from services.identity.config import IdentitySettings

        deployments = process_deployments(render(values_file))
        identity = pod_spec(deployments["identity"])
        container = identity["containers"][0]
        env = env_of(container)
        files = [
            pathlib.PurePosixPath(env[name]["value"])
            for name in ("IDENTITY_VAULT_KEK_FILE", "IDENTITY_BLIND_INDEX_KEY_FILE", "IDENTITY_CODE_HASH_KEY_FILE")
        ]
        mount = next(m for m in container["volumeMounts"] if m["name"] == "identity-vault-keys")
        assert {str(f.parent) for f in files} == {mount["mountPath"]}
        assert mount["readOnly"] is True
        secret = next(v for v in identity["volumes"] if v["name"] == "identity-vault-keys")["secret"]
        assert [item["path"] for item in secret["items"]] == [f.name for f in files]
        expected = values_of(values_file).get("identity", {}).get("vault", {}).get("keySecret")
        assert secret["secretName"] == (expected or values_of(values_file)["keys"]["existingSecret"])
        settings = IdentitySettings(
            vault_kek_file=str(files[0]),
            blind_index_key_file=str(files[1]),
            code_hash_key_file=str(files[2]),
            sms_url=env["IDENTITY_SMS_URL"]["value"],
            verifier_url=env["IDENTITY_VERIFIER_URL"]["value"],
            database_url="postgresql://avgate_identity@db/avgate",  # from its Secret in the pod
            generate_keys=env["AVGATE_GENERATE_KEYS"]["value"],
        )
        # The chart mounts no mTLS files yet (its certificate Secrets come with the Helm issue): only those remain.
        assert all(p.startswith("AVGATE_TLS_") for p in settings.local_stand_ins())
        for process, workload in deployments.items():
            if process != "identity":
                assert "identity-vault-keys" not in {v["name"] for v in pod_spec(workload)["volumes"]}, process
