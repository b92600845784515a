"""What many test modules share, one home each:

- `errors`: the google.rpc details an RPC error carries;
- `sql`: any schema read as the superuser (the ledger's queue and log), PostgreSQL's log;
- `principals`: a principal for each role and the signed token metadata services accept;
- `clock`: a clock the test moves by hand;
- `serve`: a gRPC server started and stopped around a test, with a channel to it;
- `factories`: valid request messages and fresh ids;
- `stack`: the whole stack as `avgate run` starts it (the e2e and bench fixtures).

Import from here (`from tests.support import details, provider`); the modules
are the homes, this is the surface. Three homes are imported from directly,
because their names mean something only next to one service's tests:

- `http`: local HTTP servers standing in for a third party, and `serving` one;
- `reporting`: reporting's IncidentService (`Reporting`, `create`) and regulator
  feed (`Feed`, `create_many`) as the integration tests drive them;
- `identity`: identity's verification flow (`Env`, the people the verifier
  stand-in knows, `consent` … `verify`).

Fixtures that several modules share live in a conftest.py, never in a test
module (tests/unit/test_test_layout.py keeps it so).
"""

from tests.support.clock import FakeClock
from tests.support.errors import details, unpack, violated_fields
from tests.support.factories import incident_input, new_tenant
from tests.support.principals import (
    Metadata,
    Tokens,
    operator,
    provider,
    public,
    regulator,
    service,
    signer,
    token_metadata,
)
from tests.support.serve import Served, serve
from tests.support.sql import ServerLog, admin_sql, ledger_entries, stored_rows
from tests.support.stack import LIMITS_OUT_OF_REACH, RunningStack, run_stack

__all__ = [
    "LIMITS_OUT_OF_REACH",
    "FakeClock",
    "Metadata",
    "RunningStack",
    "Served",
    "ServerLog",
    "Tokens",
    "admin_sql",
    "details",
    "incident_input",
    "ledger_entries",
    "new_tenant",
    "operator",
    "provider",
    "public",
    "regulator",
    "run_stack",
    "serve",
    "service",
    "signer",
    "stored_rows",
    "token_metadata",
    "unpack",
    "violated_fields",
]
