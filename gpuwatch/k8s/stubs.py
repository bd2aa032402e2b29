"""Generate the PodResources v1 stubs (``gpuwatch/k8s/v1/api_pb2*.py``) from the kubelet's
published ``api.proto`` with grpcio-tools' protoc; ``--check`` compares instead of writing.

    python -m gpuwatch.k8s.stubs          # after updating gpuwatch/k8s/v1/api.proto
    python -m gpuwatch.k8s.stubs --check  # exit 1 when the committed stubs differ (tests/test_pods.py)

The stubs are committed, so gpuwatch runs with grpcio and protobuf alone (the `kubernetes` extra);
grpcio-tools is needed only here. Run from anywhere: protoc is given the repository root as its
include path, so the generated grpc module imports ``gpuwatch.k8s.v1.api_pb2`` by its full name.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parent.parent.parent  # holds gpuwatch/
PROTO = Path("gpuwatch/k8s/v1/api.proto")
OUTPUTS = ("api_pb2.py", "api_pb2_grpc.py")


def generate(out_root: Path) -> dict[str, str]:
    """Run protoc into ``out_root``; the generated files' text by name."""
    from grpc_tools import protoc

    args = [
        "protoc",
        f"-I{PACKAGE_ROOT}",
        f"--python_out={out_root}",
        f"--grpc_python_out={out_root}",
        str(PROTO),
    ]
    if protoc.main(args) != 0:
        raise RuntimeError(f"protoc failed on {PROTO}")
    where = out_root / PROTO.parent
    return {name: (where / name).read_text() for name in OUTPUTS}


def differences() -> list[str]:
    """The committed stubs that differ from what protoc generates now."""
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    committed = PACKAGE_ROOT / PROTO.parent
    return [
        name
        for name, text in fresh.items()
        if not (committed / name).exists() or (committed / name).read_text() != text
    ]


def main(argv: list[str]) -> int:
    if "--check" in argv:
        stale = differences()
        if stale:
            print(f"stale: {', '.join(stale)}; run python -m gpuwatch.k8s.stubs", file=sys.stderr)
        return 1 if stale else 0
    with tempfile.TemporaryDirectory() as tmp:
        fresh = generate(Path(tmp))
    for name, text in fresh.items():
        (PACKAGE_ROOT / PROTO.parent / name).write_text(text)
        print(f"wrote {PROTO.parent / name}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
