"""What many test modules share, one home each:

- `errors`: the google.rpc details an RPC error carries;
- `sql`: any schema read as the superuser (the ledger's queue and log), PostgreSQL's log;
- `principals`: a principal for each role and the signed token metadata services accept;
- `clock`: a clock the test moves by hand;
- `serve`: a gRPC server started and stopped around a test, with a channel to it;
- `factories`: valid request messages and fresh ids;
- `stack`: the whole stack as `avgate run` starts it (the e2e and bench fixtures).

Import from here (`from tests.support import details, provider`); the modules
are the homes, this is the surface.
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
from tests.support.sql import ServerLog, admin_sql, ledger_entries
from tests.support.stack import RunningStack, run_stack

__all__ = [
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
    "token_metadata",
    "unpack",
    "violated_fields",
]
