"""Writes docs/configuration.md from the settings classes, so the table cannot drift (`make docs`).

The rendering is avgate.cli.config_doc; tests/unit/test_configuration_doc.py
fails when the file and the classes disagree. `--check` exits 1 instead of
writing when the file is out of date.

    python scripts/gen_config_docs.py [--check]
"""

from __future__ import annotations

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
# This checkout's packages, not whichever one the virtual environment's editable install points at.
sys.path.insert(0, str(REPO))

from avgate.cli.config_doc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], REPO / "docs" / "configuration.md"))
