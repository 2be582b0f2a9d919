"""The committed stubs are exactly what protoc generates from proto/ today."""

from __future__ import annotations

from pathlib import Path

from dict_ratelimit.bridge.codegen import generate
from dict_ratelimit.settings import project_root


def test_generated_stubs_match_the_proto_files(tmp_path: Path) -> None:
    written = generate(project_root() / "proto", tmp_path)
    assert len(written) == 9  # bridge, simulator control, test Pulsar wire: 3 files each
    drifted = []
    for fresh in written:
        committed = project_root() / fresh.relative_to(tmp_path)
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            drifted.append(str(committed.relative_to(project_root())))
    assert drifted == [], "run scripts/gen-protos and commit the result"
