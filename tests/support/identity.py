"""Identity's verification flow as the integration tests drive it: the people the verifier
stand-in knows, a running identity server's handle (`Env`), and the calls that take a user
from consent to a completed verification."""

from __future__ import annotations

import json
import pathlib
import re
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
from psycopg.rows import dict_row

from avgate.common.v1 import common_pb2
from avgate.identity.v1 import identity_pb2, identity_pb2_grpc
from avgate.kernel.db import libpq_url
from avgate.kernel.principal import TOKEN_METADATA_KEY, Principal, Role, TokenSigner
from services.identity.config import IdentitySettings
from services.identity.verifier_standin import VerifierStandIn
from tests.conftest import Database
from tests.support.clock import FakeClock

SERVICE = "/avgate.identity.v1.IdentityService/"
START = datetime(2027, 3, 1, 4, 0, tzinfo=UTC)
V = identity_pb2
ADULT = {"name": "测试用户甲", "resident_id_number": "110101199003071233", "mobile": "+86 138 0013 8000"}
ADULT_B = {"name": "测试用户乙", "resident_id_number": "310104198511204567", "mobile": "13900139001"}
CHILD = {"name": "测试用户丙", "resident_id_number": "440305201506150219", "mobile": "13700137002"}
DOWN = {"name": "测试用户戊", "resident_id_number": "51010719920229888X", "mobile": "13600136003"}
ORG = {"unified_social_credit_code": "91110108MA01ABCD5T", "organization_name": "测试科技有限公司"}


@dataclass
class Env:
    """A running identity server as a test reaches it: the stub, the gateway's token signer, the
    database, the injected clock, the SMS sink file, the verifier stand-in, the settings, and
    every error a call returned (`call` records them)."""

    stub: identity_pb2_grpc.IdentityServiceStub
    signer: TokenSigner
    database: Database
    clock: FakeClock
    sms_file: pathlib.Path
    standin: VerifierStandIn
    settings: IdentitySettings
    errors: list[str]

    async def call(self, method: str, request: Any, principal: Principal) -> Any:
        token = self.signer.sign(principal, audience="identity", method=SERVICE + method)
        try:
            return await getattr(self.stub, method)(request, metadata=((TOKEN_METADATA_KEY, token),))
        except grpc.aio.AioRpcError as error:
            self.errors.append(f"{error.code()} {error.details()} {error.debug_error_string()}")
            raise

    async def sql(self, query: str, *params: Any) -> list[dict[str, Any]]:
        async with await psycopg.AsyncConnection.connect(libpq_url(self.database.admin_url)) as conn:
            cur = conn.cursor(row_factory=dict_row)
            await cur.execute(query, params)
            rows = list(await cur.fetchall()) if cur.description else []
            await conn.commit()
            return rows

    def last_code(self, national: str) -> str:
        for line in reversed(self.sms_file.read_text(encoding="utf-8").splitlines()):
            message = json.loads(line)
            if message["to"] == "+86" + national:
                found = re.search(r"\d{6}", message["text"])
                assert found is not None
                return found.group()
        raise AssertionError("no SMS to that number")


def provider(tenant: str, address: str = "203.0.113.5") -> Principal:
    """The tenant's provider key (request id "req-1"), calling from `address`."""
    return Principal(
        role=Role.PROVIDER, subject=f"key-{tenant}", tenant_id=tenant, request_id="req-1", client_address=address
    )


def user(tenant: str, user_id: str = "u-1") -> common_pb2.UserRef:
    return common_pb2.UserRef(tenant_id=tenant, user_id=user_id)


def key() -> str:
    return f"k-{uuid.uuid4().hex[:10]}"


async def consent(env: Env, tenant: str, user_id: str = "u-1") -> Any:
    answer = await env.call(
        "RecordConsent",
        V.RecordConsentRequest(
            idempotency_key=key(),
            user=user(tenant, user_id),
            purpose=V.CONSENT_PURPOSE_SENSITIVE_PERSONAL_INFORMATION,
            text_version="2027-01",
        ),
        provider(tenant),
    )
    return answer.consent


async def start(env: Env, tenant: str, person: dict[str, str] = ADULT, user_id: str = "u-1") -> Any:
    answer = await env.call(
        "StartVerification",
        V.StartVerificationRequest(
            idempotency_key=key(), user=user(tenant, user_id), individual=V.IndividualIdentity(**person)
        ),
        provider(tenant),
    )
    return answer.flow


def national(mobile: str) -> str:
    return re.sub(r"\D", "", mobile)[-11:]


async def confirm(env: Env, tenant: str, flow_id: str, mobile: str, address: str = "203.0.113.5") -> Any:
    await env.call("SendVerificationCode", V.SendVerificationCodeRequest(flow_id=flow_id), provider(tenant, address))
    code = env.last_code(national(mobile))
    answer = await env.call(
        "ConfirmVerificationCode",
        V.ConfirmVerificationCodeRequest(flow_id=flow_id, code=code),
        provider(tenant, address),
    )
    return answer


async def complete(env: Env, tenant: str, flow_id: str) -> Any:
    return await env.call(
        "CompleteVerification", V.CompleteVerificationRequest(flow_id=flow_id, idempotency_key=key()), provider(tenant)
    )


async def verify(env: Env, tenant: str, person: dict[str, str] = ADULT, user_id: str = "u-1") -> Any:
    """Consent, start, confirm the SMS code, wait out the resend minute, complete: the answer."""
    await consent(env, tenant, user_id)
    flow = await start(env, tenant, person, user_id)
    await confirm(env, tenant, flow.flow_id, person["mobile"])
    env.clock.now += timedelta(seconds=61)  # the next send to a number waits a minute
    return await complete(env, tenant, flow.flow_id)
