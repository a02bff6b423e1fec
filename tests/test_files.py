"""files.py: the SHA-256 of a file and JSON reading with a one-line error, on any bytes."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from profiles import examples

from aperture_zoo.errors import ApertureError
from aperture_zoo.files import UnreadableFileError, atomic_write_text, file_sha256, read_json

ANY_FILE = settings(max_examples=examples(60), deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@ANY_FILE
@given(data=st.binary(max_size=3000))
def test_file_sha256_is_the_sha256_of_the_bytes(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


@ANY_FILE
@given(data=st.binary(max_size=200))
def test_read_json_returns_the_value_or_one_clear_line(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "doc.json"
    path.write_bytes(data)
    try:
        expected = json.loads(data.decode())
    except (UnicodeDecodeError, ValueError):
        with pytest.raises(UnreadableFileError) as info:
            read_json(path, "write it again")
        message = str(info.value)
        assert str(path) in message and message.endswith("write it again") and "\n" not in message
    else:
        assert read_json(path) == expected


def test_read_json_raises_the_callers_error_for_a_missing_file(tmp_path: Path) -> None:
    class MyError(ApertureError):
        pass

    with pytest.raises(MyError, match=r"missing\.json is not readable JSON .*; regenerate it"):
        read_json(tmp_path / "missing.json", "regenerate it", MyError)
    atomic_write_text(tmp_path / "ok.json", '{"a": [1, 2]}')
    assert read_json(tmp_path / "ok.json") == {"a": [1, 2]}
