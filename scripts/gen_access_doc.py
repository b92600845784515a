"""Writes docs/authorization.md from the protos' method options, so the table cannot drift (`make docs`).

The rendering is avgate.cli.access_doc; tests/unit/test_authorization_table.py
fails when the file and the protos disagree. Generate the proto code first
(scripts/gen_protos.py). `--check` exits 1 instead of writing when the file
is out of date.

    python scripts/gen_access_doc.py [--check]
"""

from __future__ import annotations

import pathlib
import sys

REPO = pathlib.Path(__file__).resolve().parent.parent
# This checkout's packages, not whichever one the virtual environment's editable install points at.
sys.path.insert(0, str(REPO))

from avgate.cli.access_doc import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:], REPO / "docs" / "authorization.md"))
