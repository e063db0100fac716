"""`ais create`, `ais bucket rm|props`, `ais ls`, `ais get`, `ais put` end to end: the CLI as a
process against a real node process."""

from __future__ import annotations

from pathlib import Path
from typing import Any

Ais = Any  # the `ais` fixture of conftest.py


def test_create_as_in_the_users_document(ais: Ais) -> None:
    assert ais("create", "ubuntu").stdout == '"ubuntu" bucket created\n'
    assert ais("create", "ais://local-lpr").stdout == '"ais://local-lpr" bucket created\n'
    again = ais("create", "ubuntu", check=False)
    assert again.returncode == 2
    assert 'bucket "ais://ubuntu" already exists' in again.stderr
    assert "Traceback" not in again.stderr
    assert ais("bucket", "create", "b3").returncode == 0
    assert ais("ls").stdout.splitlines() == ["Name", "ais://b3", "ais://local-lpr",
                                             "ais://ubuntu"]
    assert ais("create", "bad/name", check=False).returncode == 2
    assert ais("bucket", "rm", "ais://b3").stdout == '"ais://b3" bucket destroyed\n'
    missing = ais("bucket", "rm", "ais://b3", check=False)
    assert missing.returncode == 2 and 'bucket "ais://b3" does not exist' in missing.stderr


def test_put_ls_get(ais: Ais, tmp_path: Path) -> None:
    ais("create", "ais://data")
    assert ais("ls", "ais://data").stdout == "No objects in ais://data\n"
    assert ais("ls", "--no-headers", "--cached", "ais://data").stdout == ""
    src = tmp_path / "file.bin"
    src.write_bytes(b"x" * 3000)
    assert "=> ais://data/file.bin" in ais("put", src, "ais://data/").stdout
    ais("put", src, "ais://data/dir/renamed.bin")
    ais("put", src, "ais://data/dir/renamed.bin")  # overwrite: version 2
    lines = ais("ls", "ais://data").stdout.splitlines()
    assert lines == ["Name\tSize\tVersion", "dir/renamed.bin\t2.93KiB\t2",
                     "file.bin\t2.93KiB\t1"]
    assert ais("ls", "-H", "--prefix", "dir/", "ais://data").stdout.splitlines() == [
        "dir/renamed.bin\t2.93KiB\t2"]
    assert len(ais("ls", "--no-headers", "--cached", "ais://data").stdout.splitlines()) == 2
    ais("get", "ais://data/dir/renamed.bin")  # default: the base name, in the cwd
    assert (tmp_path / "renamed.bin").read_bytes() == src.read_bytes()
    ais("get", "ais://data/file.bin", tmp_path / "out.bin")
    assert (tmp_path / "out.bin").read_bytes() == src.read_bytes()
    out = ais("get", "ais://data/file.bin", "-", input=b"")
    assert out.stdout == src.read_text()
    missing = ais("get", "ais://data/nope", tmp_path / "nope", check=False)
    assert missing.returncode == 2 and "ais://data/nope does not exist" in missing.stderr
    assert not (tmp_path / "nope").exists()


