"""What several reporting sub-domains share: content hashes, evidence
references, routes and the regulator-scope rule that decides which routes a
regulator sees (incidents, evidence and security assessments all answer to it).

Pure values and rules: no grpc, no SQL. Each sub-domain's own values live in
its package (services.reporting.incidents.domain, ...).
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from avgate.kernel.principal import NATIONAL, RegulatorScope

SHA256_HEX = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class EvidenceRef:
    sha256: str
    size_bytes: int = 0
    media_type: str = ""


@dataclass(frozen=True)
class Route:
    department: str
    region_code: str


def region_prefix(code: str) -> str:
    """The prefix of the GB/T 2260 codes a region covers: "000000" all, "110000" "11", "110100" "1101"."""
    if code == NATIONAL:
        return ""
    if code.endswith("0000"):
        return code[:2]
    if code.endswith("00"):
        return code[:4]
    return code


def in_scope(scope: RegulatorScope | None, routes: Sequence[Route]) -> bool:
    """Whether a regulator's departments and regions cover at least one route."""
    if scope is None:
        return False
    prefixes = [region_prefix(c) for c in scope.region_codes]
    return any(
        route.department in scope.departments and any(route.region_code.startswith(p) for p in prefixes)
        for route in routes
    )
