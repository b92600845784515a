"""The SMS adapter against a real local HTTP server (retries on 503, none on
400, no number or code in logs or errors), the local SMS file stand-in, and
the identity verifier adapter against the real stand-in server speaking its
protocol (match, mismatch, not found, unavailable, stand-in refused in
production), started in-process and as the process the local stack runs."""

from __future__ import annotations

import json
import logging
import pathlib
import stat
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from avgate.kernel.errors import DependencyUnavailable
from services.identity.http_post import JsonPoster
from services.identity.sms import FileSmsSink, HttpSmsSender, SmsRejected
from services.identity.verifier import HttpIdentityVerifier, VerifierOutcome
from services.identity.verifier_standin import DEFAULT_DATA, VerifierStandIn, load_data
from tests.conftest import free_port
from tests.support.http import serving

PHONE = "+8613812345678"
TEXT = "Your avgate code is 482913; it expires in 5 minutes."
KNOWN = [json.loads(line) for line in DEFAULT_DATA.read_text(encoding="utf-8").splitlines()]
PERSON = next(e for e in KNOWN if e["kind"] == "individual" and "answer" not in e)
DOWN = next(e for e in KNOWN if e.get("answer") == "unavailable")
COMPANY = next(e for e in KNOWN if e["kind"] == "organization")


async def no_sleep(seconds: float) -> None:
    return None


class ScriptedGateway(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, statuses: list[int]):
        super().__init__(("127.0.0.1", 0), _GatewayHandler)
        self.statuses = statuses
        self.seen: list[tuple[dict[str, str], dict[str, Any]]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/sms/send"


class _GatewayHandler(BaseHTTPRequestHandler):
    server: ScriptedGateway

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.seen.append((dict(self.headers), document))
        status = self.server.statuses[min(len(self.server.seen), len(self.server.statuses)) - 1]
        # A gateway that echoes the request in its errors: the adapter must not pass that on.
        body = json.dumps({"message_id": "m-1"} if status < 300 else {"error": f"bad {document['to']}"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


@pytest.fixture
def gateway(request: pytest.FixtureRequest) -> Iterator[ScriptedGateway]:
    yield from serving(ScriptedGateway(list(request.param)))


def sms_sender(url: str, attempts: int = 3) -> HttpSmsSender:
    return HttpSmsSender(JsonPoster(url, bearer_token="t0ken", timeout=2, max_attempts=attempts, sleep=no_sleep))


def assert_no_personal_data(*texts: str) -> None:
    for text in texts:
        assert PHONE not in text and PHONE[3:] not in text
        assert "482913" not in text


class TestHttpSmsSender:
    @pytest.mark.parametrize("gateway", [[503, 503, 200]], indirect=True)
    async def test_retries_on_503_then_succeeds_as_one_message(
        self, gateway: ScriptedGateway, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        message_id = await sms_sender(gateway.url).send(PHONE, TEXT)
        assert message_id == "m-1"
        assert len(gateway.seen) == 3
        keys = {headers["Idempotency-Key"] for headers, _ in gateway.seen}
        assert len(keys) == 1  # one message, however often it was tried
        headers, document = gateway.seen[-1]
        assert document == {"to": PHONE, "text": TEXT, "client_ref": keys.pop()}
        assert headers["Authorization"] == "Bearer t0ken"
        assert_no_personal_data(caplog.text)
        assert "+86138****5678" in caplog.text

    @pytest.mark.parametrize("gateway", [[400]], indirect=True)
    async def test_no_retry_on_400(self, gateway: ScriptedGateway, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        with pytest.raises(SmsRejected) as refused:
            await sms_sender(gateway.url).send(PHONE, TEXT)
        assert len(gateway.seen) == 1
        assert "400" in str(refused.value)
        assert_no_personal_data(caplog.text, str(refused.value))

    @pytest.mark.parametrize("gateway", [[503]], indirect=True)
    async def test_unavailable_after_bounded_retries(
        self, gateway: ScriptedGateway, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        with pytest.raises(DependencyUnavailable) as refused:
            await sms_sender(gateway.url, attempts=4).send(PHONE, TEXT)
        assert len(gateway.seen) == 4
        assert_no_personal_data(caplog.text, str(refused.value))

    async def test_unavailable_when_nothing_listens(self, caplog: pytest.LogCaptureFixture) -> None:
        caplog.set_level(logging.DEBUG)
        sender = sms_sender(f"http://127.0.0.1:{free_port()}/sms", attempts=2)
        with pytest.raises(DependencyUnavailable):
            await sender.send(PHONE, TEXT)
        assert_no_personal_data(caplog.text)


class TestFileSmsSink:
    async def test_writes_the_whole_message_for_the_operator_only(
        self, tmp_path: pathlib.Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        path = tmp_path / "sms" / "messages.jsonl"
        sink = FileSmsSink(path)
        first = await sink.send(PHONE, TEXT)
        second = await sink.send("+8613900001111", "another")
        lines = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
        assert [(m["message_id"], m["to"], m["text"]) for m in lines] == [
            (first, PHONE, TEXT),
            (second, "+8613900001111", "another"),
        ]
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert_no_personal_data(caplog.text)

    async def test_tightens_a_file_left_readable(self, tmp_path: pathlib.Path) -> None:
        path = tmp_path / "messages.jsonl"
        path.write_text("")
        path.chmod(0o644)
        await FileSmsSink(path).send(PHONE, TEXT)
        assert stat.S_IMODE(path.stat().st_mode) == 0o600


@pytest.fixture
def standin() -> Iterator[VerifierStandIn]:
    yield from serving(VerifierStandIn(("127.0.0.1", 0), load_data(DEFAULT_DATA), bearer_token="cr3d"))


def verifier(url: str, *, token: str = "cr3d", refuse_stand_in: bool = False) -> HttpIdentityVerifier:
    poster = JsonPoster(url, bearer_token=token, timeout=2, max_attempts=3, sleep=no_sleep)
    return HttpIdentityVerifier(poster, refuse_stand_in=refuse_stand_in)


class TestIdentityVerifier:
    async def test_a_known_identity_matches(self, standin: VerifierStandIn) -> None:
        answer = await verifier(standin.url).verify_individual(name=PERSON["name"], id_number=PERSON["id_number"])
        assert answer.outcome is VerifierOutcome.MATCH and answer.matched
        assert answer.reference.startswith("standin-")

    async def test_another_name_is_a_mismatch(self, standin: VerifierStandIn) -> None:
        answer = await verifier(standin.url).verify_individual(name="测试冒名者", id_number=PERSON["id_number"])
        assert answer.outcome is VerifierOutcome.MISMATCH and not answer.matched

    async def test_an_unknown_number_is_not_found(self, standin: VerifierStandIn) -> None:
        answer = await verifier(standin.url).verify_individual(name=PERSON["name"], id_number="11010519491231002X")
        assert answer.outcome is VerifierOutcome.NOT_FOUND

    async def test_organisations(self, standin: VerifierStandIn) -> None:
        v = verifier(standin.url)
        assert (await v.verify_organization(credit_code=COMPANY["credit_code"], name=COMPANY["name"])).matched
        wrong = await v.verify_organization(credit_code=COMPANY["credit_code"], name="测试别家公司")
        assert wrong.outcome is VerifierOutcome.MISMATCH

    async def test_unavailable_is_never_a_match(
        self, standin: VerifierStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        with pytest.raises(DependencyUnavailable) as held:
            await verifier(standin.url).verify_individual(name=DOWN["name"], id_number=DOWN["id_number"])
        assert standin.requests["/v1/individuals:verify"] == 3  # bounded retries, then hold
        for text in (caplog.text, str(held.value)):
            assert DOWN["id_number"] not in text and DOWN["name"] not in text

    async def test_down_is_unavailable(self) -> None:
        with pytest.raises(DependencyUnavailable):
            await verifier(f"http://127.0.0.1:{free_port()}").verify_individual(
                name=PERSON["name"], id_number=PERSON["id_number"]
            )

    async def test_refused_credentials_are_unavailable_not_a_match(self, standin: VerifierStandIn) -> None:
        with pytest.raises(DependencyUnavailable):
            await verifier(standin.url, token="wrong").verify_individual(
                name=PERSON["name"], id_number=PERSON["id_number"]
            )
        assert standin.requests["/v1/individuals:verify"] == 1  # a 401 is not retried

    async def test_production_refuses_the_stand_ins_answers(self, standin: VerifierStandIn) -> None:
        with pytest.raises(DependencyUnavailable):
            await verifier(standin.url, refuse_stand_in=True).verify_individual(
                name=PERSON["name"], id_number=PERSON["id_number"]
            )

    async def test_the_stand_in_logs_no_id_number(
        self, standin: VerifierStandIn, caplog: pytest.LogCaptureFixture
    ) -> None:
        caplog.set_level(logging.DEBUG)
        await verifier(standin.url).verify_individual(name=PERSON["name"], id_number=PERSON["id_number"])
        assert "individual 110" in caplog.text
        assert PERSON["id_number"] not in caplog.text and PERSON["name"] not in caplog.text

    def test_the_shipped_identities_have_valid_check_characters(self) -> None:
        from stdnum.cn import ric, uscc

        for entry in KNOWN:
            if entry["kind"] == "individual":
                assert ric.calc_check_digit(entry["id_number"]) == entry["id_number"][-1]
            else:
                assert uscc.is_valid(entry["credit_code"])


class TestStandInProcess:
    def test_runs_as_the_process_the_local_stack_starts(self) -> None:
        port = free_port()
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "services.identity.verifier_standin",
                "--port",
                str(port),
                "--data",
                str(DEFAULT_DATA),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        try:
            assert process.stdout is not None
            assert "listening" in process.stdout.readline().decode()
            body = json.dumps({"name": PERSON["name"], "id_number": PERSON["id_number"]}).encode()
            request = urllib.request.Request(
                f"http://127.0.0.1:{port}/v1/individuals:verify",
                data=body,
                headers={"Content-Type": "application/json"},
            )
            with urllib.request.urlopen(request, timeout=5) as response:
                assert json.loads(response.read())["result"] == "match"
                assert response.headers["X-Avgate-Stand-In"] == "true"
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as response:
                assert json.loads(response.read())["requests"] == {"/v1/individuals:verify": 1}
        finally:
            process.terminate()
            output = process.communicate(timeout=10)[0].decode()
        assert PERSON["id_number"] not in output
