"""The production profile asks PostgreSQL which role each of a process's database URLs connects as
(issue 12, finding 8): a superuser (who could disable the ledger's triggers), another process's role
(one URL shared by every process), or a role holding powers beyond its own schema through a role it
belongs to is refused, by the URL's variable; the process's own role passes."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import psycopg
import pytest

from avgate.kernel.db import LEDGER_SEQUENCER_ROLE, libpq_url, role_url
from avgate.kernel.process import DatabaseUnreachable, check_production_profile, database_role_problems
from avgate.kernel.settings import DatabaseLogin, ProductionProfileError
from services.screening.config import ScreeningSettings
from tests.conftest import PROCESS_NAMES, Database

pytestmark = pytest.mark.db


def current_user(url: str) -> str:
    with psycopg.connect(libpq_url(url)) as conn:
        row = conn.execute("select current_user").fetchone()
    assert row is not None
    return str(row[0])


class TestTheRoleAUrlConnectsAs:
    def test_a_superuser_url_is_refused_by_its_variable(self, template_database: Database) -> None:
        admin = current_user(template_database.admin_url)
        login = DatabaseLogin("SCREENING_DATABASE_URL", template_database.admin_url, "avgate_screening")
        (problem,) = database_role_problems(login)
        assert problem.startswith(f"SCREENING_DATABASE_URL connects as {admin},")
        assert "is not avgate_screening" in problem and "it is a superuser" in problem

    @pytest.mark.parametrize("name", PROCESS_NAMES)
    def test_each_process_own_role_passes(self, name: str, template_database: Database) -> None:
        login = DatabaseLogin(f"{name.upper()}_DATABASE_URL", template_database.url_for(name), f"avgate_{name}")
        assert database_role_problems(login) == []

    def test_the_sequencer_role_passes(self, template_database: Database) -> None:
        url = role_url(template_database.admin_url, LEDGER_SEQUENCER_ROLE)
        assert (
            database_role_problems(DatabaseLogin("REPORTING_SEQUENCER_DATABASE_URL", url, LEDGER_SEQUENCER_ROLE)) == []
        )

    def test_a_url_shared_with_another_process_is_refused(self, template_database: Database) -> None:
        """One DATABASE_URL for every process connects all but one of them as another's role."""
        login = DatabaseLogin("DATABASE_URL", template_database.url_for("identity"), "avgate_gateway")
        (problem,) = database_role_problems(login)
        assert problem.startswith("DATABASE_URL connects as avgate_identity,") and "is not avgate_gateway" in problem

    def test_an_unreachable_server_is_waited_for_then_refused_as_unavailable(self) -> None:
        """A database still starting is waited for; one that stays down is no configuration error,
        but the process must not start with its role unchecked."""
        login = DatabaseLogin("COMPLAINTS_DATABASE_URL", "postgresql://avgate_complaints@127.0.0.1:1/avgate", "x")
        started = time.monotonic()
        with pytest.raises(DatabaseUnreachable, match=r"^COMPLAINTS_DATABASE_URL: cannot check the role"):
            database_role_problems(login, connect_timeout=2, wait_seconds=1.0)
        assert time.monotonic() - started >= 0.5, "it tried again before giving up"


@pytest.fixture
def member_of_a_database_maker(template_database: Database) -> Iterator[str]:
    """A login role, member of a role that may create databases; dropped after."""
    suffix = uuid.uuid4().hex[:8]
    login, maker = f"avgate_t_{suffix}", f"avgate_t_{suffix}_maker"
    with psycopg.connect(libpq_url(template_database.admin_url), autocommit=True) as conn:
        conn.execute(f'create role "{maker}" nologin createdb')
        conn.execute(f'create role "{login}" login in role "{maker}"')
        conn.execute(f'grant connect on database "{template_database.name}" to "{login}"')
    try:
        yield login
    finally:
        with psycopg.connect(libpq_url(template_database.admin_url), autocommit=True) as conn:
            conn.execute(f'revoke connect on database "{template_database.name}" from "{login}"')
            conn.execute(f'drop role "{login}"')
            conn.execute(f'drop role "{maker}"')


def test_powers_held_through_a_member_role_are_refused(
    template_database: Database, member_of_a_database_maker: str
) -> None:
    login = member_of_a_database_maker
    url = role_url(template_database.admin_url, login)
    (problem,) = database_role_problems(DatabaseLogin("GATEWAY_DATABASE_URL", url, login))
    assert f"its role {login}_maker may create databases" in problem
    assert "is not" not in problem  # the right role, with too much


def production_screening(url: str, monkeypatch: pytest.MonkeyPatch) -> ScreeningSettings:
    """Screening with every stand-in resolved (the TLS files are only named here) and `url` as its database."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    for name, value in {
        "AVGATE_ENV": "production",
        "AVGATE_GENERATE_KEYS": "false",
        "SCREENING_DATABASE_URL": url,
        "AVGATE_TLS_CA_FILE": "/run/secrets/tls/ca.pem",
        "AVGATE_TLS_CERT_FILE": "/run/secrets/tls/screening.pem",
        "AVGATE_TLS_KEY_FILE": "/run/secrets/tls/screening.key",
    }.items():
        monkeypatch.setenv(name, value)
    return ScreeningSettings()


class TestTheStartCheck:
    def test_the_superuser_url_stops_the_start(
        self, template_database: Database, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        with pytest.raises(ProductionProfileError) as refused:
            check_production_profile(production_screening(template_database.admin_url, monkeypatch))
        (problem,) = refused.value.problems
        assert problem.startswith("SCREENING_DATABASE_URL connects as") and "a superuser" in problem

    def test_the_own_role_url_passes(self, template_database: Database, monkeypatch: pytest.MonkeyPatch) -> None:
        check_production_profile(production_screening(template_database.url_for("screening"), monkeypatch))
