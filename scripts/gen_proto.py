"""Generate the committed gRPC/protobuf stubs from proto/ into postfleet.core.proto.

The .proto files live under proto/postfleet/<area>/v1/ (DESIGN.md). Generated
Python must not claim the module path postfleet.<area> (that is a role's
package), so each file is staged under postfleet/core/proto/<area>/v1/ and
compiled from there: the generated imports then point into postfleet.core.

Usage: python scripts/gen_proto.py [OUTDIR]   (default: libs/core/src)
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
PROTO = ROOT / "proto" / "postfleet"


def generate(outdir: Path) -> list[Path]:
    with tempfile.TemporaryDirectory() as tmp:
        staged = []
        for src in sorted(PROTO.glob("*/v1/*.proto")):
            rel = Path("postfleet/core/proto") / src.relative_to(PROTO)
            dst = Path(tmp) / rel
            dst.parent.mkdir(parents=True, exist_ok=True)
            # Imports between our own files follow them to the staged path.
            dst.write_text(src.read_text().replace('import "postfleet/',
                                                   'import "postfleet/core/proto/'))
            staged.append(str(rel))
        include = str(Path(protoc.__file__).parent / "_proto")
        # mypy-protobuf's plugin sits beside this interpreter; name it, as
        # the venv's bin/ need not be on PATH.
        plugin = Path(sys.executable).parent / "protoc-gen-mypy"
        rc = protoc.main(
            ["protoc", f"-I{tmp}", f"-I{include}", f"--plugin=protoc-gen-mypy={plugin}",
             f"--python_out={outdir}",
             f"--grpc_python_out={outdir}", f"--mypy_out={outdir}", *staged]
        )
        if rc != 0:
            raise SystemExit(f"protoc failed ({rc})")
    pkg = outdir / "postfleet" / "core" / "proto"
    for d in [pkg, *[p for p in pkg.rglob("*") if p.is_dir()]]:
        (d / "__init__.py").touch()
    return sorted(pkg.rglob("*.py*"))


if __name__ == "__main__":
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "libs" / "core" / "src"
    for path in generate(out):
        print(path.relative_to(out))
