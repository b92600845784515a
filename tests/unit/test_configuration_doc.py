"""docs/configuration.md is generated from the settings classes and cannot drift from them."""

from __future__ import annotations

import pathlib
from datetime import timedelta

import pytest

from avgate.cli.config_doc import (
    FIX_COMMAND,
    SETTINGS_CLASSES,
    iso_duration,
    markdown_text,
    render,
    undocumented,
)

DOC = pathlib.Path(__file__).resolve().parents[2] / "docs" / "configuration.md"


class TestConfigurationDoc:
    def test_the_document_is_what_the_settings_classes_render(self) -> None:
        assert DOC.read_text(encoding="utf-8") == render(), (
            f"{DOC.name} is out of date with the settings classes: run `{FIX_COMMAND}` and commit the result"
        )

    def test_every_setting_has_a_description(self) -> None:
        missing = undocumented()
        assert not missing, (
            "settings without an attribute docstring (a string literal right after the field, saying what it is, "
            f"its unit and what unset means): {', '.join(missing)}"
        )

    @pytest.mark.parametrize("settings", SETTINGS_CLASSES, ids=lambda s: s.__name__)
    def test_field_docstrings_are_read(self, settings: type) -> None:
        assert settings.model_config.get("use_attribute_docstrings") is True

    def test_every_process_has_its_section_and_ports(self) -> None:
        text = render()
        for heading in ("## gateway (`GATEWAY_`)", "## identity (`IDENTITY_`)", "## reporting (`REPORTING_`)"):
            assert heading in text
        assert "| gateway | 50051 | 9460 |" in text
        assert "| complaints | 50064 | 9464 |" in text


class TestRendering:
    @pytest.mark.parametrize(
        ("value", "shown"),
        [
            (timedelta(days=365), "P365D"),
            (timedelta(hours=1, minutes=30), "PT1H30M"),
            (timedelta(days=1, hours=12), "P1DT12H"),
            (timedelta(0), "PT0S"),
        ],
        ids=["days", "hours-minutes", "days-hours", "zero"],
    )
    def test_durations_are_iso_8601(self, value: timedelta, shown: str) -> None:
        assert iso_duration(value) == shown

    def test_placeholders_outside_code_survive_markdown(self) -> None:
        assert markdown_text("Unset: <keys dir>/x, or `<key id>` | y") == "Unset: &lt;keys dir>/x, or `<key id>` \\| y"
