"""Atomic writes leave either the old file or the complete new one."""

from __future__ import annotations

import json

import pytest

from cardiomm.atomic import atomic_path, write_json_atomic


def test_atomic_write_and_failure_cleanup(tmp_path):
    out = tmp_path / "sub" / "result.json"
    write_json_atomic(out, {"a": 1})
    assert json.loads(out.read_text()) == {"a": 1}
    with pytest.raises(RuntimeError):
        with atomic_path(out) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash")
    assert json.loads(out.read_text()) == {"a": 1}
    assert sorted(p.name for p in out.parent.iterdir()) == ["result.json"]
