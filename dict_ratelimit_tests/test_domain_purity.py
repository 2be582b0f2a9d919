"""The domain layer imports no Dagster, SQL or gRPC (dependencies point inwards)."""

from __future__ import annotations

import ast
from pathlib import Path

import dict_ratelimit.domain

FORBIDDEN = ("dagster", "sqlalchemy", "psycopg2", "grpc", "pulsar", "yoyo", "prometheus_client")


def test_domain_modules_import_nothing_from_the_outer_layers() -> None:
    domain_dir = Path(dict_ratelimit.domain.__file__).parent
    offenders = []
    files = sorted(domain_dir.rglob("*.py"))
    assert len(files) >= 2
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for name in names:
                root = name.split(".")[0]
                if root in FORBIDDEN or name.startswith(
                    ("dict_ratelimit.storage", "dict_ratelimit.defs")
                ):
                    offenders.append(f"{path.name}: {name}")
    assert offenders == []
