"""`avgate run` as a user runs it: the whole stack as separate processes,
checked through the gateway with real credentials and real tools."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2

from avgate.common.v1 import common_pb2
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.db import libpq_url
from avgate.kernel.principal import Principal, Role
from avgate.kernel.reporting_handoff import report_incident
from avgate.reporting.v1 import reporting_pb2, reporting_pb2_grpc
from tests.conftest import REPO, Database
from tests.support import RunningStack
from tests.support.stack import SERVICES, health, health_on, service_channel

pytestmark = pytest.mark.e2e

GRPCURL = REPO / ".tools" / "bin" / "grpcurl"


class TestLocalStack:
    def test_every_service_is_serving_through_the_gateway(self, running: RunningStack) -> None:
        for full_name in SERVICES.values():
            assert health(running.gateway, full_name) == health_pb2.HealthCheckResponse.SERVING, full_name

    def test_grpcurl_lists_every_service_by_reflection(self, running: RunningStack) -> None:
        listed = subprocess.run(
            [str(GRPCURL), "-plaintext", running.gateway, "list"],
            capture_output=True,
            text=True,
            check=True,
            timeout=20,
        ).stdout.split()
        expected = {*SERVICES.values(), "avgate.gateway.v1.GatewayService", "avgate.reporting.v1.AuditLedgerService"}
        assert expected <= set(listed)

    def test_grpcurl_call_with_the_development_key_reaches_the_service(self, running: RunningStack) -> None:
        key = running.description["development_api_keys"]["provider"]
        result = subprocess.run(
            [
                str(GRPCURL),
                "-plaintext",
                "-H",
                f"authorization: Bearer {key}",
                "-d",
                '{"user": {"user_id": "u-1"}, "action": "ACCOUNT_FUNCTION_PUBLISH"}',
                running.gateway,
                "avgate.identity.v1.IdentityService/CheckEligibility",
            ],
            capture_output=True,
            text=True,
            timeout=20,
        )
        # Identity answered for the key's tenant: an unverified user may not publish.
        assert "INELIGIBILITY_CODE_VERIFICATION_LEVEL_TOO_LOW" in result.stdout, result.stderr

    def test_call_without_the_development_key_is_refused(self, running: RunningStack) -> None:
        with grpc.insecure_channel(running.gateway) as channel:
            stub = identity_pb2_grpc.IdentityServiceStub(channel)
            with pytest.raises(grpc.RpcError) as refused:
                stub.CheckEligibility(identity_pb2.CheckEligibilityRequest(), timeout=5)
        assert refused.value.code() is grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]

    def test_metrics_are_exposed_by_every_process(self, running: RunningStack) -> None:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        health(running.gateway, SERVICES["identity"])
        for name, info in running.description["processes"].items():
            # A call that reached this process: the gateway's public port is plaintext locally, services take mTLS.
            if name == "gateway":
                health(info["grpc"], "")
            else:
                with service_channel(running, name) as channel:
                    health_on(channel, "")
            with urllib.request.urlopen(info["metrics"], timeout=5) as response:
                body = response.read().decode()
            # A sample of the project's RPC counter for that call, not only the metric's HELP line.
            handled = [
                s
                for f in text_string_to_metric_families(body)
                for s in f.samples
                if s.name == "grpc_server_handled_total"
                and s.labels.get("grpc_service") == "grpc.health.v1.Health"
                and s.labels.get("grpc_method") == "Check"
            ]
            assert sum(s.value for s in handled) >= 1, name
        with urllib.request.urlopen(running.description["processes"]["gateway"]["metrics"], timeout=5) as response:
            assert 'grpc_method="Check"' in response.read().decode()

    def test_reporting_exports_the_ledger_sequencers_gauges(self, running: RunningStack) -> None:
        import urllib.request

        from prometheus_client.parser import text_string_to_metric_families

        url = running.description["processes"]["reporting"]["metrics"]
        deadline = time.monotonic() + 10
        while True:
            with urllib.request.urlopen(url, timeout=5) as response:
                samples = {
                    s.name: s.value for f in text_string_to_metric_families(response.read().decode()) for s in f.samples
                }
            # Creating the three development keys (provider, regulator, operator) wrote three ledger entries.
            if samples.get("avgate_ledger_tree_size", 0) >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert samples["avgate_ledger_sequencer_leader"] == 1
        assert samples["avgate_ledger_tree_size"] >= 3
        assert samples["avgate_ledger_integration_lag_seconds_count"] >= 3

    def test_one_development_key_per_role_is_printed(self, running: RunningStack) -> None:
        keys = running.description["development_api_keys"]
        assert set(keys) == {"provider", "regulator", "operator"}
        assert all(secret.startswith("avgk_") for secret in keys.values())

    def test_operator_manages_keys_with_the_command_line(self, running: RunningStack) -> None:
        def avgate(*args: str) -> subprocess.CompletedProcess[str]:
            env = {**os.environ, "AVGATE_API_KEY": running.description["development_api_keys"]["operator"]}
            return subprocess.run(
                [sys.executable, "-m", "avgate.cli.main", "keys", "--target", running.gateway, *args],
                env=env,
                capture_output=True,
                text=True,
                timeout=30,
            )

        created = avgate("create", "--name", "cli key", "--role", "provider", "--tenant", "cli-tenant")
        assert created.returncode == 0, created.stderr
        key = json.loads(created.stdout)
        assert key["apiKey"]["tenantId"] == "cli-tenant" and key["secret"].startswith("avgk_")
        listed = json.loads(avgate("list", "--tenant", "cli-tenant").stdout)
        assert [k["keyId"] for k in listed["apiKeys"]] == [key["apiKey"]["keyId"]]
        revoked = avgate("revoke", key["apiKey"]["keyId"], "--reason", "test")
        assert revoked.returncode == 0 and "revokeTime" in json.loads(revoked.stdout)["apiKey"]
        assert json.loads(avgate("list", "--tenant", "cli-tenant").stdout).get("apiKeys", []) == []
        refused = avgate("create", "--name", "", "--role", "provider")
        assert refused.returncode == 1
        error = json.loads(refused.stderr)["error"]
        assert error["code"] == "INVALID_ARGUMENT"
        violations = next(d for d in error["details"] if d["@type"].endswith("BadRequest"))["fieldViolations"]
        assert {v["field"] for v in violations} == {"display_name", "tenant_id"}

    def test_an_incident_screening_queues_reaches_reporting_and_the_provider_reads_it(
        self, running: RunningStack, database: Database
    ) -> None:
        external_id = f"e2e-{time.monotonic_ns()}"
        incident = reporting_pb2.IncidentInput(
            external_id=external_id,
            source=reporting_pb2.INCIDENT_SOURCE_SCREENING,
            category=reporting_pb2.INCIDENT_CATEGORY_PROHIBITED_CONTENT,
            prohibited_type=common_pb2.PROHIBITED_CONTENT_TYPE_VIOLENCE,
            legal_basis=[common_pb2.LegalBasis(instrument="NAVIS-2019", article="9")],
            facts="Upload matched a hash bank; transmission stopped.",
            region_code="110105",
        )
        origin = Principal(role=Role.PROVIDER, subject="dev-key", tenant_id="dev-tenant", request_id="e2e-handoff")

        async def queue() -> None:
            # What screening's own code will do in the transaction that stops the upload.
            url = libpq_url(database.url_for("screening"))
            async with await psycopg.AsyncConnection.connect(url) as conn, conn.transaction():
                await report_incident(conn, incident, schema="screening", origin=origin)

        asyncio.run(queue())
        deadline = time.monotonic() + 30
        while True:
            with psycopg.connect(libpq_url(database.admin_url)) as conn:
                row = conn.execute(
                    "select receipt from screening.outbox where state = 'delivered' "
                    "and convert_from(payload, 'UTF8')::jsonb ->> 'request_id' = %s",
                    (origin.request_id,),
                ).fetchone()
            if row is not None:
                break
            assert time.monotonic() < deadline, "screening's dispatcher did not deliver the incident"
            time.sleep(0.2)
        incident_id = json.loads(row[0])["incident_id"]
        key = running.description["development_api_keys"]["provider"]
        with grpc.insecure_channel(running.gateway) as channel:
            got = reporting_pb2_grpc.IncidentServiceStub(channel).GetIncident(
                reporting_pb2.GetIncidentRequest(incident_id=incident_id),
                metadata=(("authorization", f"Bearer {key}"),),
                timeout=10,
            )
        assert got.incident.external_id == external_id
        assert got.incident.tenant_id == "dev-tenant"
