"""`make lint`'s code-shape check (scripts/check_code_shape.py) fails on what the house forbids."""

from __future__ import annotations

import pathlib
import subprocess
import sys

from tests.conftest import REPO

SCRIPT = REPO / "scripts" / "check_code_shape.py"


def check(tree: pathlib.Path, files: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in files.items():
        path = tree / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return subprocess.run(
        [sys.executable, str(SCRIPT), "pkg"], cwd=tree, capture_output=True, text=True, check=False, timeout=60
    )


class TestCodeShape:
    def test_a_clean_tree_passes(self, tmp_path: pathlib.Path) -> None:
        result = check(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "def helper():\n    return 1\n",
                "pkg/b.py": "from pkg.a import helper\n",
            },
        )
        assert result.returncode == 0, result.stdout
        assert result.stdout == ""

    def test_a_private_name_imported_from_another_module_fails(self, tmp_path: pathlib.Path) -> None:
        result = check(
            tmp_path,
            {
                "pkg/__init__.py": "",
                "pkg/a.py": "def _helper():\n    return 1\n",
                "pkg/sub/__init__.py": "",
                "pkg/sub/b.py": "def f():\n    from ..a import _helper\n    return _helper()\n",
            },
        )
        assert result.returncode == 1
        assert "pkg/sub/b.py:2: imports private name '_helper' from pkg.a" in result.stdout

    def test_a_private_submodule_of_a_package_is_allowed(self, tmp_path: pathlib.Path) -> None:
        result = check(tmp_path, {"pkg/__init__.py": "from pkg import _impl\n", "pkg/_impl.py": "X = 1\n"})
        assert result.returncode == 0, result.stdout

    def test_a_module_over_900_lines_fails(self, tmp_path: pathlib.Path) -> None:
        result = check(tmp_path, {"pkg/__init__.py": "", "pkg/big.py": "x = 1\n" * 901, "pkg/ok.py": "x = 1\n" * 900})
        assert result.returncode == 1
        assert result.stdout.splitlines() == [
            "pkg/big.py: 901 lines; a module holds at most 900 (split it by what it owns)"
        ]
