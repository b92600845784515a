"""A regulator's reads as audit-ledger entries (Art. 17, supervision and inspection).

One entry per record read and one per listed page — never one per item of a
page or stream — so the trail says who looked at what without growing with
every row. The entries hold ids, never personal data.
"""

from __future__ import annotations

from collections.abc import Sequence

from avgate.kernel.legal import ART_17
from avgate.kernel.principal import Principal
from avgate.ledger.entry import LedgerEntry

SUPERVISION = ART_17


def read_entry(caller: Principal, record: str, record_id: str, tenant_id: str) -> LedgerEntry:
    """`caller` read one `record` ("incident", "security_assessment", ...): action "<record>.read"."""
    return LedgerEntry(
        action=f"{record}.read",
        subject_type=record,
        subject_id=record_id,
        actor=caller,
        legal_basis=SUPERVISION,
        tenant_id=tenant_id,
    )


def page_entry(caller: Principal, record: str, id_name: str, ids: Sequence[str]) -> LedgerEntry:
    """`caller` listed a page of `record`s: action "<record>.list", data {"count", "<id_name>s"}."""
    return LedgerEntry(
        action=f"{record}.list",
        subject_type=f"{record}_page",
        subject_id=f"{ids[0]}..{ids[-1]}",
        actor=caller,
        legal_basis=SUPERVISION,
        tenant_id="",
        data={"count": len(ids), f"{id_name}s": list(ids)},
    )
