"""Each process's models put their tables in the schema that process owns (the one its role may change)."""

from __future__ import annotations

import pytest

from avgate.kernel.db import SCHEMA_OWNERS, SchemaOwner


class TestSchemaOwners:
    @pytest.mark.parametrize("owner", SCHEMA_OWNERS, ids=[o.name for o in SCHEMA_OWNERS])
    def test_models_live_in_the_owned_schema(self, owner: SchemaOwner) -> None:
        metadata = owner.metadata()

        assert metadata.schema == owner.schema
        assert all(table.schema == owner.schema for table in metadata.tables.values())
