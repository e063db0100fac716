"""The official `aistore` Python SDK (2.0.0) works unchanged against a node."""

from __future__ import annotations

from pathlib import Path

import pytest
from aistore.sdk import Client, ListObjectFlag
from aistore.sdk.errors import AISError, ErrBckAlreadyExists, ErrBckNotFound, ErrObjNotFound

from helpers_app import InProcessNode


@pytest.fixture
def client(sdk: Client) -> Client:
    return sdk


def test_cluster_info_and_ready(client: Client, inproc: InProcessNode) -> None:
    smap = client.cluster().get_info()
    assert smap.proxy_si.public_net.direct_url == inproc.endpoint
    assert client.cluster().is_ready() is True
    assert client.cluster().get_primary_url() == inproc.endpoint


def test_buckets(client: Client) -> None:
    assert [b.name for b in client.cluster().list_buckets()] == []
    bck = client.bucket("sdk-b1")
    bck.create()
    with pytest.raises(ErrBckAlreadyExists):
        bck.create()
    bck.create(exist_ok=True)
    assert [b.name for b in client.cluster().list_buckets(provider="ais")] == ["sdk-b1"]
    assert "Ais-Bucket-Props" in bck.head()
    bck.delete()
    with pytest.raises(ErrBckNotFound):
        bck.delete()
    bck.delete(missing_ok=True)
    with pytest.raises(AISError):
        bck.head()


def test_objects(client: Client) -> None:
    bck = client.bucket("sdk-objs").create(exist_ok=True)
    obj = bck.object("dir/a b+c.txt")
    resp = obj.get_writer().put_content(b"hello world")
    assert resp.headers["Ais-Version"] == "1"
    reader = obj.get_reader()
    assert reader.read_all() == b"hello world"
    attrs = reader.attributes
    assert attrs.size == 11 and attrs.checksum_value == "45ab6734b21e6968"
    assert attrs.checksum_type == "xxhash2" and attrs.obj_version == "1"
    assert obj.get_reader(byte_range="bytes=6-").read_all() == b"world"
    assert obj.head().size == 11
    props = obj.props
    assert props.size == 11 and props.present and props.obj_version == "1"
    obj.get_writer().set_custom_props({"k1": "v1", "ETag": "e1"})
    assert obj.get_reader().attributes.custom_metadata == {"k1": "v1", "ETag": "e1"}
    obj.delete()
    with pytest.raises(ErrObjNotFound):
        obj.get_reader().read_all()
    with pytest.raises(ErrObjNotFound):
        obj.delete()
    with pytest.raises(AISError):  # HEAD errors have no body: always a plain AISError
        obj.head()


def test_put_file_and_missing_bucket(client: Client, tmp_path: Path) -> None:
    bck = client.bucket("sdk-files").create(exist_ok=True)
    src = tmp_path / "f.bin"
    src.write_bytes(b"\x00\x01" * 100_000)
    bck.object("f.bin").get_writer().put_file(src)
    assert bck.object("f.bin").get_reader().read_all() == src.read_bytes()
    with pytest.raises(ErrBckNotFound):
        client.bucket("sdk-nobucket").object("x").get_reader().read_all()


def test_listing_pages(client: Client) -> None:
    bck = client.bucket("sdk-list").create(exist_ok=True)
    for i in range(5):
        bck.object(f"p/obj{i}").get_writer().put_content(b"x" * i)
    bck.object("other").get_writer().put_content(b"o")
    entries = bck.list_all_objects(prefix="p/", page_size=2)
    assert [(e.name, e.size) for e in entries] == [(f"p/obj{i}", i) for i in range(5)]
    assert all(e.is_cached() and e.is_ok() for e in entries)
    page = bck.list_objects(prefix="p/", page_size=2)
    assert page.uuid and page.continuation_token == "p/obj1" and len(page.entries) == 2
    names = [o.name for o in bck.list_all_objects_iter(prefix="p/", props="name,size")]
    assert names == [f"p/obj{i}" for i in range(5)]
    assert len(list(bck.list_objects_iter(page_size=2))) == 6
    cached = bck.list_all_objects(flags=[ListObjectFlag.CACHED])
    assert len(cached) == 6 and cached[0].name == "other"
    assert [e.name for e in bck.list_all_objects(start_after="p/obj3")] == ["p/obj4"]
