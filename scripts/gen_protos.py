"""Generates the Python code for every avgate proto into the repository root.

The proto packages are `avgate.<service>.v1`, so generated modules land in
`avgate/<service>/v1/` and import each other as `avgate.<service>.v1.x_pb2`
with no rewriting. google.rpc protos are vendored in protos/google for buf
and for protoc's include path only; their Python code comes from the
googleapis-common-protos package, so it is not generated here.
Generated files are git-ignored and never edited.
"""

from __future__ import annotations

import pathlib
import shutil
import sys

from grpc_tools import protoc

ROOT = pathlib.Path(__file__).resolve().parent.parent
PROTOS = ROOT / "protos"


def main() -> int:
    sources = sorted(str(p.relative_to(PROTOS)) for p in (PROTOS / "avgate").rglob("*.proto"))
    for stale in (ROOT / "avgate").glob("*/v1"):
        if stale.is_dir() and all(
            p.name.endswith(("_pb2.py", "_pb2.pyi", "_pb2_grpc.py")) or p.name == "__pycache__" for p in stale.iterdir()
        ):
            shutil.rmtree(stale)
    well_known = pathlib.Path(protoc.__file__).parent / "_proto"
    args = [
        "grpc_tools.protoc",
        f"-I{PROTOS}",
        f"-I{well_known}",
        f"--python_out={ROOT}",
        f"--pyi_out={ROOT}",
        f"--grpc_python_out={ROOT}",
        *sources,
    ]
    code = protoc.main(args)
    if code != 0:
        print("protoc failed", file=sys.stderr)
        return code
    print(f"generated {len(sources)} proto files into avgate/*/v1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
