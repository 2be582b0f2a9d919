"""Generate the Python stubs of ``proto/`` (``scripts/gen-protos``; a test checks for drift).

Output lands next to the package modules named by the proto paths, e.g.
``proto/dict_ratelimit/bridge/v1/rate_limit.proto`` → ``dict_ratelimit/bridge/v1/rate_limit_pb2.py``
(+ ``_pb2_grpc.py`` and ``.pyi``), so the generated imports are plain package imports.
"""

from __future__ import annotations

import sys
from importlib import resources
from pathlib import Path

from dict_ratelimit.settings import project_root


def proto_files(proto_root: Path) -> list[Path]:
    """Every ``.proto`` under ``proto_root``, sorted."""
    return sorted(proto_root.rglob("*.proto"))


def generate(proto_root: Path, out_dir: Path) -> list[Path]:
    """Run protoc (from grpcio-tools) over every proto; returns the files written."""
    from grpc_tools import protoc  # dev dependency: only needed to regenerate

    well_known = str(resources.files("grpc_tools") / "_proto")
    files = proto_files(proto_root)
    args = [
        "protoc",
        f"-I{proto_root}",
        f"-I{well_known}",
        f"--python_out={out_dir}",
        f"--pyi_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        *[str(path.relative_to(proto_root)) for path in files],
    ]
    if protoc.main(args) != 0:
        raise RuntimeError("protoc failed")
    written = []
    for path in files:
        stem = out_dir / path.relative_to(proto_root).with_suffix("")
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            written.append(stem.with_name(stem.name + suffix))
        for folder in stem.relative_to(out_dir).parents:
            init = out_dir / folder / "__init__.py"
            if folder != Path(".") and not init.exists():
                init.write_text("")
    return written


if __name__ == "__main__":
    target = Path(sys.argv[1]) if len(sys.argv) > 1 else project_root()
    for generated in generate(project_root() / "proto", target):
        print(generated)
