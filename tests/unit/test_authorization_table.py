"""The default-deny authorisation table (issue 11), read from the compiled contracts.

Every RPC of every avgate API must carry its `(avgate.common.v1.access)` entry:
a new RPC without one fails here, naming it. The rules below hold the table to
its decisions: only the complaint entrance and the ledger's public proofs are
open to the public and to callers without a key, only the gateway's key
RPCs manage credentials, no entry is empty or lists a role no API key has,
every service caller is another real avgate process, and every RPC says
whether a retry is safe. docs/authorization.md is rendered from the same
options and must match them.
"""

from __future__ import annotations

import importlib
import pathlib

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, FieldDescriptor

from avgate.cli.access_doc import API_PACKAGES, FIX_COMMAND, Rpc, render, rpcs
from avgate.common.v1 import common_pb2

REPO = pathlib.Path(__file__).resolve().parents[2]
DOC = REPO / "docs" / "authorization.md"

PROCESSES = frozenset({"identity", "screening", "reporting", "complaints"})
"""The avgate processes that sign their own tokens and so may appear as service callers."""

PUBLIC_RPCS = frozenset(
    {
        "/avgate.complaints.v1.ComplaintsPublicService/UploadEvidence",
        "/avgate.complaints.v1.ComplaintsPublicService/SubmitComplaint",
        "/avgate.complaints.v1.ComplaintsPublicService/LookupTicket",
        "/avgate.complaints.v1.ComplaintsPublicService/FileAppeal",
        "/avgate.complaints.v1.ComplaintsPublicService/ListChannels",
        "/avgate.reporting.v1.AuditLedgerService/GetLatestTreeHead",
        "/avgate.reporting.v1.AuditLedgerService/GetTreeHead",
        "/avgate.reporting.v1.AuditLedgerService/GetInclusionProof",
        "/avgate.reporting.v1.AuditLedgerService/GetConsistencyProof",
        "/avgate.reporting.v1.AuditLedgerService/ListSigningKeys",
    }
)
"""The only RPCs a member of the public (a public API key, or no key at all) may call."""

KEY_MANAGEMENT_RPCS = frozenset(
    {
        "/avgate.gateway.v1.GatewayService/CreateApiKey",
        "/avgate.gateway.v1.GatewayService/RevokeApiKey",
        "/avgate.gateway.v1.GatewayService/RotateApiKey",
    }
)
"""The RPCs that create, rotate or revoke credentials (ListApiKeys only reads key descriptions)."""

READ_PREFIXES = ("Get", "List", "Check", "Lookup", "Match", "Read", "Download", "Watch")
READ_NAMES = frozenset({"Follow"})

REQUEST_ID_FIELDS = frozenset({"request_id", "idempotency_key", "external_id"})
"""Caller-chosen ids that make a write safe to retry (the first result is returned again)."""

NO_SIDE_EFFECTS = descriptor_pb2.MethodOptions.NO_SIDE_EFFECTS
IDEMPOTENT = descriptor_pb2.MethodOptions.IDEMPOTENT
IDEMPOTENCY_UNKNOWN = descriptor_pb2.MethodOptions.IDEMPOTENCY_UNKNOWN
NEVER_ALLOWED = frozenset({common_pb2.ROLE_SERVICE, common_pb2.ROLE_UNSPECIFIED})


def every_rpc() -> list[Rpc]:
    return list(rpcs())


def entries() -> dict[str, tuple[Rpc, common_pb2.MethodAccess]]:
    return {rpc.path: (rpc, rpc.access) for rpc in every_rpc() if rpc.access is not None}


def is_read(name: str) -> bool:
    return name.startswith(READ_PREFIXES) or name in READ_NAMES


def request_id_paths(message: Descriptor, prefix: str = "", depth: int = 0) -> list[str]:
    """Paths of the caller-chosen request ids in a request, looking into its messages (two levels:
    `metadata.request_id` of a stream's first message, `incidents[].external_id` of a batch)."""
    found: list[str] = []
    for field in message.fields:
        path = f"{prefix}{field.name}"
        if field.name in REQUEST_ID_FIELDS and field.type == FieldDescriptor.TYPE_STRING:
            found.append(path)
        elif (
            depth < 2
            and field.type == FieldDescriptor.TYPE_MESSAGE
            and field.message_type.full_name.startswith("avgate.")
        ):
            found.extend(request_id_paths(field.message_type, f"{path}{'[]' if field.is_repeated else ''}.", depth + 1))
    return found


class TestEveryRpcHasAnEntry:
    def test_every_api_is_read(self) -> None:
        # A package missing here would make every other test pass vacuously.
        generated = {p.parent.parent.name for p in (REPO / "avgate").glob("*/v1/*_pb2.py")}
        with_services = {
            name
            for name in generated
            if importlib.import_module(f"avgate.{name}.v1.{name}_pb2").DESCRIPTOR.services_by_name
        }
        assert with_services == set(API_PACKAGES)
        assert len(every_rpc()) >= 114

    def test_every_rpc_of_every_service_has_an_access_option(self) -> None:
        missing = [rpc.path for rpc in every_rpc() if rpc.access is None]
        assert not missing, (
            "RPCs without an (avgate.common.v1.access) entry are refused to everyone; give each one: "
            + ", ".join(missing)
        )


class TestThePublic:
    def test_only_the_complaint_entrance_and_the_ledger_proofs_admit_public_keys(self) -> None:
        public = {path for path, (_, e) in entries().items() if common_pb2.ROLE_PUBLIC in e.allowed_roles}
        assert public == PUBLIC_RPCS

    def test_only_the_complaint_entrance_and_the_ledger_proofs_admit_callers_without_a_key(self) -> None:
        anonymous = {path for path, (_, e) in entries().items() if e.allow_anonymous}
        assert anonymous == PUBLIC_RPCS

    def test_ledger_entries_are_not_public(self) -> None:
        _, entry = entries()["/avgate.reporting.v1.AuditLedgerService/ListEntries"]
        assert not entry.allow_anonymous
        assert common_pb2.ROLE_PUBLIC not in entry.allowed_roles

    def test_aggregate_health_is_for_operators_only(self) -> None:
        _, entry = entries()["/avgate.gateway.v1.GatewayService/GetAggregateHealth"]
        assert list(entry.allowed_roles) == [common_pb2.ROLE_OPERATOR]
        assert not entry.allow_anonymous and not entry.allowed_service_callers


class TestKeyManagement:
    def test_only_the_gateways_key_rpcs_manage_credentials(self) -> None:
        marked = {path for path, (_, e) in entries().items() if e.key_management}
        assert marked == KEY_MANAGEMENT_RPCS

    def test_key_rpcs_are_for_operators_and_providers_only(self) -> None:
        for path in KEY_MANAGEMENT_RPCS:
            _, entry = entries()[path]
            assert set(entry.allowed_roles) == {common_pb2.ROLE_OPERATOR, common_pb2.ROLE_PROVIDER}, path
            assert not entry.allow_anonymous and not entry.allowed_service_callers, path


class TestEntries:
    def test_no_entry_lists_a_role_no_api_key_has(self) -> None:
        wrong = {
            path: [common_pb2.Role.Name(r) for r in e.allowed_roles if r in NEVER_ALLOWED]
            for path, (_, e) in entries().items()
            if NEVER_ALLOWED & set(e.allowed_roles)
        }
        assert not wrong, f"ROLE_SERVICE and ROLE_UNSPECIFIED are never allowed_roles: {wrong}"

    def test_no_entry_is_empty(self) -> None:
        empty = [
            path
            for path, (_, e) in entries().items()
            if not e.allowed_roles and not e.allow_anonymous and not e.allowed_service_callers
        ]
        assert not empty, f"an entry that admits nobody is a mistake (omit no RPC, say who may call it): {empty}"

    def test_no_role_is_listed_twice(self) -> None:
        twice = [path for path, (_, e) in entries().items() if len(set(e.allowed_roles)) != len(e.allowed_roles)]
        assert not twice


class TestServiceCallers:
    def test_every_caller_is_another_avgate_process_with_an_origin_role(self) -> None:
        problems = []
        for path, (rpc, entry) in entries().items():
            processes = [c.process for c in entry.allowed_service_callers]
            if len(set(processes)) != len(processes):
                problems.append(f"{path}: a process is listed twice")
            for caller in entry.allowed_service_callers:
                if caller.process not in PROCESSES:
                    problems.append(f"{path}: {caller.process!r} is not an avgate process")
                elif caller.process == rpc.package:
                    problems.append(f"{path}: {caller.process} calling itself")
                if not caller.origin_roles:
                    problems.append(f"{path}: {caller.process} may act for no origin role")
                if common_pb2.ROLE_UNSPECIFIED in caller.origin_roles:
                    problems.append(f"{path}: {caller.process} lists ROLE_UNSPECIFIED")
        assert not problems, "\n".join(problems)

    def test_the_outbox_handoffs_may_create_incidents(self) -> None:
        _, entry = entries()["/avgate.reporting.v1.IncidentService/CreateIncident"]
        callers = {c.process for c in entry.allowed_service_callers}
        assert callers == {"identity", "screening", "complaints"}


class TestRetries:
    def test_reads_have_no_side_effects_and_nothing_else_claims_it(self) -> None:
        wrong = [
            f"{rpc.path} ({rpc.idempotency})"
            for rpc in every_rpc()
            if is_read(rpc.method.name) != (rpc.idempotency == "NO_SIDE_EFFECTS")
        ]
        assert not wrong, f"reads (Get*, List*, ...) are NO_SIDE_EFFECTS and writes are not: {wrong}"

    def test_writes_with_a_request_id_are_idempotent_and_the_others_leave_the_default(self) -> None:
        wrong = []
        for rpc in every_rpc():
            if is_read(rpc.method.name):
                continue
            ids = request_id_paths(rpc.method.input_type)
            level = rpc.method.GetOptions().idempotency_level
            if ids and level != IDEMPOTENT:
                wrong.append(f"{rpc.path} carries {', '.join(ids)} but is not IDEMPOTENT")
            if not ids and level != IDEMPOTENCY_UNKNOWN:
                wrong.append(f"{rpc.path} carries no request id, so a retry is not known to be safe")
        assert not wrong, "\n".join(wrong)

    def test_request_ids_are_found_inside_stream_metadata_and_batches(self) -> None:
        by_path = {rpc.path: rpc for rpc in every_rpc()}
        attach = by_path["/avgate.reporting.v1.EvidenceService/AttachEvidence"]
        batch = by_path["/avgate.reporting.v1.IncidentService/BatchCreateIncidents"]
        assert request_id_paths(attach.method.input_type) == ["metadata.request_id"]
        assert request_id_paths(batch.method.input_type) == ["incidents[].external_id"]


class TestDocument:
    def test_the_document_is_what_the_protos_render(self) -> None:
        assert DOC.read_text(encoding="utf-8") == render(), (
            f"{DOC.name} is out of date with the protos' access options: run `{FIX_COMMAND}` and commit the result"
        )

    def test_no_rpc_is_shown_without_an_entry(self) -> None:
        text = render()
        assert "no entry" not in text
        assert "| `CreateIncident` | provider, operator |" in text
