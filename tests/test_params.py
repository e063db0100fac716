"""`ais start download` arguments: SOURCE (spec 1.2, with our differences), DEST (2.1),
the object-list file (3.4), durations and sizes."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from aisdl.cli.params import (
    DURATION,
    SIZE,
    Dest,
    Source,
    parse_dest,
    parse_source,
    read_object_list,
)
from aisdl.errors import BadRequest
from aisdl.models import Bucket


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://www.googleapis.com/storage/v1/b/bucket?query=key#key",
         Source("http://www.googleapis.com/storage/v1/b/bucket?query=key#key", "http")),
        ("gs://bucket/very/long/prefix-",
         Source("gs://bucket/very/long/prefix-", "gcp", Bucket("gcp", "bucket"),
                "very/long/prefix-")),
        ("gcp://bucket", Source("gs://bucket", "gcp", Bucket("gcp", "bucket"), "")),
        ("https://s3.amazonaws.com/bucket", Source("https://s3.amazonaws.com/bucket", "https")),
        ("s3.amazonaws.com/bucket", Source("https://s3.amazonaws.com/bucket", "https")),
        ("s3://bucket/objname.tar",
         Source("s3://bucket/objname.tar", "aws", Bucket("aws", "bucket"), "objname.tar")),
        ("aws://bucket", Source("s3://bucket", "aws", Bucket("aws", "bucket"), "")),
        ("az://bucket", Source("az://bucket", "azure", Bucket("azure", "bucket"), "")),
        ("azure://bucket/subfolder/objname.tar",
         Source("az://bucket/subfolder/objname.tar", "azure", Bucket("azure", "bucket"),
                "subfolder/objname.tar")),
        ("gs://bucket/obj{00..10}.tgz",
         Source("gs://bucket/obj{00..10}.tgz", "gcp", Bucket("gcp", "bucket"),
                "obj{00..10}.tgz")),
        ("ais://172.10.10.10/bucket",
         Source("http://172.10.10.10:8080/v1/objects/bucket", "ais")),
        ("ais://172.10.10.10:4444/bucket",
         Source("http://172.10.10.10:4444/v1/objects/bucket", "ais")),
        ("ais://host/b/img-{0..9}.jpg", Source("http://host:8080/v1/objects/b/img-{0..9}.jpg",
                                               "ais")),
        ("src.com/image001.tar.gz", Source("https://src.com/image001.tar.gz", "https")),
        ("localhost:8000/f.bin", Source("https://localhost:8000/f.bin", "https")),
        # a trailing '/' leaves the link (upstream's path join) but stays in the prefix
        ("gs://bucket/dir/", Source("gs://bucket/dir", "gcp", Bucket("gcp", "bucket"), "dir/")),
    ],
)
def test_source_valid(text: str, expected: Source) -> None:
    assert parse_source(text) == expected


def test_source_braces_are_decoded_but_nothing_else() -> None:
    src = parse_source("https://www.googleapis.com/storage/v1/b/nv/o/"
                       "imagenet%2Fimagenet_train-%7B000000..000002%7d.tgz?alt=media&a=b+c")
    assert src.link == ("https://www.googleapis.com/storage/v1/b/nv/o/"
                        "imagenet%2Fimagenet_train-{000000..000002}.tgz?alt=media&a=b+c")


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://host/file", "invalid scheme: ftp"),
        ("oci://bucket/obj", "invalid scheme: oci"),
        ("", "source cannot be empty"),
        ("   ", "source cannot be empty"),
        ("gs://", 'invalid source "gs://": missing bucket name'),
        ("gs://bad name/x", "bucket name 'bad name' is invalid"),
        ("http://", 'invalid source "http://": missing host'),
        ("ais://", "missing host"),
        ("ais://host", "missing bucket"),
        ("ais://host:port/b", "bad port"),
    ],
)
def test_source_invalid(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_source(text)
    assert message in str(e.value)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize(
    ("text", "bucket", "path", "slash"),
    [
        ("ais://bucket/objname", Bucket("ais", "bucket"), "objname", False),
        ("ais://bucket//subfolder/objname.tar", Bucket("ais", "bucket"), "subfolder/objname.tar",
         False),
        ("ais://bucket/subfolder/objname.tar", Bucket("ais", "bucket"), "subfolder/objname.tar",
         False),
        ("ais://bucket", Bucket("ais", "bucket"), "", False),
        ("ais://bucket/", Bucket("ais", "bucket"), "", False),
        ("aws://bucket/something/", Bucket("aws", "bucket"), "something", True),
        ("az://bucket/something//", Bucket("azure", "bucket"), "something", True),
        ("gcp://bucket/one/two/", Bucket("gcp", "bucket"), "one/two", True),
        ("s3://bucket", Bucket("aws", "bucket"), "", False),
        ("gs://bucket", Bucket("gcp", "bucket"), "", False),
        ("oc://bucket", Bucket("oci", "bucket"), "", False),
        ("ais://b/dir/", Bucket("ais", "b"), "dir", True),
    ],
)
def test_dest_valid(text: str, bucket: Bucket, path: str, slash: bool) -> None:
    assert parse_dest(text) == Dest(bucket, path, has_trailing_slash=slash)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ais://", 'invalid destination "ais://": missing bucket name'),
        ("ais:///", 'invalid destination "ais:///": missing bucket name'),
        ("http://", "expecting a bucket"),
        ("http://bucket", "expecting a bucket"),
        ("http://bucket/something", "expecting a bucket"),
        ("bucket", 'backend provider cannot be empty (did you mean "ais://bucket"?)'),
        ("ftp://bucket", 'invalid backend provider "ftp"'),
        ("ais://.hidden", "bucket name '.hidden' is invalid"),
        ("", "destination cannot be empty"),
    ],
)
def test_dest_invalid(text: str, message: str) -> None:
    with pytest.raises(BadRequest) as e:
        parse_dest(text)
    assert message in str(e.value)


def test_object_list(tmp_path: Path) -> None:
    f = tmp_path / "objs.json"
    names = ["iso/minikube-v0.25.0.iso.sha256", "iso/minikube-v0.25.1.iso.sha256"]
    f.write_text(json.dumps(names))
    assert read_object_list(str(f)) == names


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "Expecting value"),
        ('{"a": "b"}', "got a JSON object"),
        ('"a"', "got a JSON string"),
        ('["a", 1]', "element 1 is a JSON number"),
        ('["a", null]', "element 1 is a JSON null"),
        ("", "Expecting value"),
    ],
)
def test_object_list_bad_content(tmp_path: Path, content: str, reason: str) -> None:
    f = tmp_path / "objs.json"
    f.write_text(content)
    with pytest.raises(BadRequest) as e:
        read_object_list(str(f))
    assert str(e.value).startswith(
        f'file "{f}" doesn\'t seem to contain JSON array of strings: ')
    assert reason in str(e.value)


def test_object_list_missing(tmp_path: Path) -> None:
    missing = tmp_path / "nope.json"
    with pytest.raises(BadRequest, match="cannot read object list file .*No such file"):
        read_object_list(str(missing))


@pytest.mark.parametrize(("text", "seconds"),
                         [("500ms", 0.5), ("10s", 10.0), ("1m", 60.0), ("30", 30.0),
                          ("1m30s", 90.0), (5, 5.0)])
def test_duration(text: str | int, seconds: float) -> None:
    assert DURATION.convert(text, None, None) == seconds


@pytest.mark.parametrize(("text", "size"),
                         [("1024", 1024), ("1GiB", 1024**3), ("500MB", 500_000_000), (7, 7)])
def test_size(text: str | int, size: int) -> None:
    assert SIZE.convert(text, None, None) == size


@pytest.mark.parametrize(("ptype", "bad"),
                         [(DURATION, "soon"), (DURATION, "-1s"), (SIZE, "-5"), (SIZE, "lots"),
                          (SIZE, "1XB")])
def test_param_types_fail_cleanly(ptype: click.ParamType, bad: str) -> None:
    @click.command()
    @click.option("--value", type=ptype)
    def cmd(value: object) -> None:
        raise AssertionError("must not run")

    result = CliRunner().invoke(cmd, ["--value", bad])
    assert result.exit_code == 2
    assert f"Invalid value for '--value': invalid {ptype.name} '{bad}'" in result.output
