"""Cloud sources end to end: the user's document's GCP examples against fake-gcs-server, and
every job type over s3:// (moto), gs:// (fake-gcs-server) and az:// (Azurite)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import Ais, Node
from helpers import free_port, wait_job
from origin import payload

SCHEMES = {"s3": "s3_server", "gs": "gcs_server", "az": "azure_server"}


@pytest.fixture
def cloud_node(tmp_path: Path, s3_server, gcs_server, azure_server) -> Iterator[Node]:
    """A node that reaches all three emulators (their endpoints and credentials in its env)."""
    env = {**s3_server.env, **gcs_server.env, **azure_server.env}
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--retry-delay", "50ms"), env=env)
    n.start()
    yield n
    n.stop()


@pytest.fixture
def cais(cloud_node: Node, tmp_path: Path) -> Ais:
    home = tmp_path / "cli-home"
    home.mkdir()
    return Ais(cloud_node, home, tmp_path)


def _job(result) -> str:  # noqa: ANN001
    return result.stdout.split()[0]


def _lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.strip()]


def test_seed_sync_walkthrough(gcs_server, cais):
    """`Sync whole GCP bucket`: 50 objects, 10 removed at the source, --sync → 40, empty diff."""
    src = gcs_server.new_bucket()
    gcs_server.put_many(src, [(f"imagenet/train-{i:03d}.tgz", payload(str(i), 500 + i))
                              for i in range(50)])
    assert len(_lines(cais("ls", "--no-headers", f"gcp://{src}").stdout)) == 50
    cais("create", "lpr-vision-copy")
    out = cais("bucket", "props", "set", "ais://lpr-vision-copy", f"backend_bck=gcp://{src}")
    assert out.stdout.splitlines()[:3] == [
        "Bucket props successfully updated",
        f'"backend_bck.name" set to:"{src}" (was:"")',
        '"backend_bck.provider" set to:"gcp" (was:"")']
    assert _lines(cais("ls", "--no-headers", "--cached", "ais://lpr-vision-copy").stdout) == []
    job = _job(cais("start", "download", f"gs://{src}", "ais://lpr-vision-copy"))
    cais("wait", "download", job)
    assert len(_lines(cais("ls", "--no-headers", "--cached", "ais://lpr-vision-copy").stdout)) == 50
    for i in range(0, 50, 5):
        gcs_server.delete(src, f"imagenet/train-{i:03d}.tgz")
    assert len(_lines(cais("ls", "--no-headers", f"gcp://{src}").stdout)) == 40
    assert len(_lines(cais("ls", "--no-headers", "--cached", "ais://lpr-vision-copy").stdout)) == 50
    job = _job(cais("start", "download", "--sync", f"gs://{src}", "ais://lpr-vision-copy"))
    cais("wait", "download", job)
    assert len(_lines(cais("ls", "--no-headers", "--cached", "ais://lpr-vision-copy").stdout)) == 40
    assert cais("ls", f"gcp://{src}").stdout == cais("ls", "--cached",
                                                     "ais://lpr-vision-copy").stdout
    st = cais.node.client().download_status(job)
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (50, 40, 0)


def test_seed_prefix_range_and_object_list(gcs_server, cais, tmp_path):
    src = gcs_server.new_bucket()
    gcs_server.put_many(src, [(f"imagenet/imagenet_train-{i:06d}.tgz", payload(str(i), 300))
                              for i in range(12)] + [("dir/prefix-a", b"a"), ("dir/prefix-b", b"b"),
                                                     ("dir/other", b"o")])
    # range over a cloud bucket
    cais("create", "local-lpr")
    job = _job(cais("start", "download",
                    f"gs://{src}/imagenet/imagenet_train-{{000000..000013}}.tgz",
                    "ais://local-lpr/imagenet/"))
    st = wait_job(cais, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (12, 2)
    assert {e["name"] for e in st["download_errors"]} == {
        "imagenet/imagenet_train-000012.tgz", "imagenet/imagenet_train-000013.tgz"}
    assert "does not exist" in st["download_errors"][0]["error"]
    # prefix into a backed bucket
    cais("create", "lpr-vision-copy")
    cais("bucket", "props", "set", "ais://lpr-vision-copy", f"backend_bck=gcp://{src}")
    job = _job(cais("start", "download", f"gs://{src}/dir/prefix-", "ais://lpr-vision-copy"))
    cais("wait", job)
    names = [line.split()[0] for line in _lines(cais("ls", "-H", "--cached",
                                                      "ais://lpr-vision-copy").stdout)]
    assert names == ["dir/prefix-a", "dir/prefix-b"]
    full = _lines(cais("ls", "ais://lpr-vision-copy", "--prefix", "dir/").stdout)
    assert full[0].split() == ["Name", "Size", "Cached"]
    assert [r.split()[::2] for r in full[1:]] == [["dir/other", "no"], ["dir/prefix-a", "yes"],
                                                  ["dir/prefix-b", "yes"]]
    # object list with a cloud SOURCE
    objects = tmp_path / "objects.txt"
    objects.write_text(json.dumps(["imagenet/imagenet_train-000003.tgz",
                                   "imagenet/imagenet_train-000007.tgz"]))
    job = _job(cais("start", "download", f"gs://{src}", "ais://local-lpr",
                    f"--object-list={objects}"))
    assert cais("wait", job).returncode == 0
    assert cais.node.client().get_object(_ais("local-lpr"), "imagenet_train-000007.tgz").content \
        == payload("7", 300)


def _ais(name: str):  # noqa: ANN202
    from aisdl.models import Bucket

    return Bucket("ais", name)


def test_whole_bucket_needs_a_backend(gcs_server, cais):
    src = gcs_server.new_bucket()
    gcs_server.put(src, "a", b"a")
    cais("create", "plain")
    r = cais("start", "download", f"gs://{src}", "ais://plain", check=False)
    assert r.returncode == 2
    assert "only possible into a bucket whose backend is that bucket" in r.stderr
    assert f"backend_bck=gs://{src}" in r.stderr or f"backend_bck=gcp://{src}" in r.stderr
    single = cais("start", "download", f"gs://{src}/a", "ais://plain/a")
    assert "does not have Cloud bucket" in single.stderr
    assert wait_job(cais, _job(single))["finished_cnt"] == 1


@pytest.mark.parametrize("scheme", SCHEMES)
def test_matrix_every_job_type(request, scheme, cais, tmp_path):
    """single, range, object list, whole bucket (backend), prefix, re-run skips, sync."""
    emu = request.getfixturevalue(SCHEMES[scheme])
    provider = {"s3": "aws", "gs": "gcp", "az": "azure"}[scheme]
    src = emu.new_bucket()
    emu.put_many(src, [(f"d/f{i:02d}", payload(f"{scheme}{i}", 1000 + i)) for i in range(10)])
    c = cais.node.client()
    single = _job(cais("start", "download", f"{scheme}://{src}/d/f03", "ais://one/x"))
    assert wait_job(c, single)["finished_cnt"] == 1
    assert c.get_object(_ais("one"), "x").content == payload(f"{scheme}3", 1003)
    rng = _job(cais("start", "download", f"{scheme}://{src}/d/f{{00..04}}", "ais://rng/"))
    assert wait_job(c, rng)["finished_cnt"] == 5
    lst = tmp_path / "l.json"
    lst.write_text('["d/f08", "d/f09"]')
    ml = _job(cais("start", "download", f"{scheme}://{src}", "ais://lst", f"--from={lst}"))
    assert wait_job(c, ml)["finished_cnt"] == 2
    cais("create", "copy")
    cais("bucket", "props", "set", "ais://copy", f"backend_bck={provider}://{src}")
    whole = _job(cais("start", "download", f"{scheme}://{src}", "ais://copy"))
    st = wait_job(c, whole)
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (10, 0, 0)
    again = wait_job(c, _job(cais("start", "download", f"{scheme}://{src}/d/", "ais://copy")))
    assert (again["finished_cnt"], again["skipped_cnt"]) == (10, 10)
    emu.put(src, "d/f01", b"changed")
    emu.delete(src, "d/f02")
    synced = wait_job(c, _job(cais("start", "download", "--sync", f"{scheme}://{src}",
                                   "ais://copy")))
    assert (synced["finished_cnt"], synced["skipped_cnt"]) == (10, 8)  # 1 new, 1 evicted
    assert c.get_object(_ais("copy"), "d/f01").content == b"changed"
    cached = [e["n"] for e in c.list_objects(_ais("copy"), cached=True)]
    assert "d/f02" not in cached and len(cached) == 9


def test_missing_source_bucket_and_unreachable_endpoint(cais, tmp_path):
    r = cais("ls", "gcp://no-such-bucket-here", check=False)
    assert r.returncode == 2 and 'does not exist' in r.stderr
    job = _job(cais("start", "download", "s3://no-such-bucket-here/x", "ais://b/x"))
    st = wait_job(cais, job)
    assert st["error_cnt"] == 1 and "does not exist" in st["download_errors"][0]["error"]


def test_bucket_props_set_as_in_the_users_document(gcs_server, cais: Ais) -> None:
    gcs_server.create_bucket("lpr-vision")
    ais = cais
    ais("create", "lpr-vision-copy")
    out = ais("bucket", "props", "set", "ais://lpr-vision-copy", "backend_bck=gcp://lpr-vision")
    assert out.stdout.splitlines() == [
        "Bucket props successfully updated",
        '"backend_bck.name" set to:"lpr-vision" (was:"")',
        '"backend_bck.provider" set to:"gcp" (was:"")',
    ]
    same = ais("bucket", "props", "set", "ais://lpr-vision-copy", "backend_bck=gs://lpr-vision")
    assert "No changes" in same.stdout
    out = ais("bucket", "props", "set", "ais://lpr-vision-copy", "versioning.enabled=false",
              "backend_bck=none")
    assert '"versioning.enabled" set to:"false" (was:"true")' in out.stdout
    assert '"backend_bck.provider" set to:"" (was:"gcp")' in out.stdout
    props = json.loads(ais("bucket", "props", "show", "ais://lpr-vision-copy").stdout)
    assert props["versioning"]["enabled"] is False and props["backend_bck"]["name"] == ""
    bad = ais("bucket", "props", "set", "ais://lpr-vision-copy", "backend_bck=ais://y",
              check=False)
    assert bad.returncode == 2 and 'Backend bucket "ais://y" must be remote' in bad.stderr
    bad = ais("bucket", "props", "set", "ais://lpr-vision-copy", "nope.x=1", check=False)
    assert bad.returncode == 2 and "unknown bucket property" in bad.stderr


def test_upstream_sync_scenarios(s3_server, cloud_node):
    """Upstream scenarios 17, 19 and 20.1-20.6 (counts as (finished, skipped))."""
    c = cloud_node.client()
    src = s3_server.new_bucket()

    def put(names: range, tag: str = "v1") -> None:
        s3_server.put_many(src, [(f"obj-{i:02d}", payload(f"{tag}{i}", 100)) for i in names])

    def run(sync: bool = True, **extra: str) -> tuple[int, int]:
        job = c.start_download({"type": "backend", "bucket": {"name": "synced"},
                                "synchronize": sync, **extra})
        st = wait_job(c, job)
        assert st["error_cnt"] == 0, st.get("download_errors")
        return st["finished_cnt"], st["skipped_cnt"]

    put(range(10))
    c.create_bucket(_ais("synced"))
    c.set_bucket_props(_ais("synced"), {"backend_bck": {"name": src, "provider": "aws"}})
    assert run() == (10, 0)                                   # 20.1
    assert run() == (10, 10)                                  # 20.2
    for i in range(4):
        s3_server.delete(src, f"obj-{i:02d}")
    assert run() == (10, 6)                                   # 20.3: 6 skips + 4 evictions
    assert run() == (6, 6)
    put(range(4))
    assert run() == (10, 6)                                   # 20.4
    assert run() == (10, 10)
    assert run(sync=False) == (10, 10)
    put(range(10), tag="v2")                                  # 20.5: overwrite all, delete 4
    for i in range(4):
        s3_server.delete(src, f"obj-{i:02d}")
    assert run() == (10, 0)
    assert run() == (6, 6)
    assert run(prefix="someprefix-") == (0, 0)                # 20.6
    assert run(suffix="somesuffix-") == (0, 0)
    put(range(10, 20))                                        # 19: new remote objects
    assert run(sync=False) == (16, 6)
    assert c.get_object(_ais("synced"), "obj-05").content == payload("v25", 100)


def test_cloud_destination_writes_through(origin, s3_server, azure_server, cais):
    origin.add("/model.bin", payload("model", 5000))
    for emu, scheme in ((s3_server, "s3"), (azure_server, "az")):
        dst = emu.new_bucket()
        job = _job(cais("start", "download", origin.url_for("/model.bin"),
                        f"{scheme}://{dst}/models/model.bin"))
        assert wait_job(cais, job)["finished_cnt"] == 1
        listed = cais("ls", f"{scheme}://{dst}", "-H").stdout.split()
        assert listed[0] == "models/model.bin"  # the object is in the cloud bucket
        from aisdl.models import Bucket

        local = cais.node.client().list_objects(Bucket.of(dst, scheme), cached=True)
        assert [e["n"] for e in local] == ["models/model.bin"]  # and stored here too


def test_a_missing_cloud_destination_is_refused_before_any_job(origin, s3_server, cais):
    origin.add("/model.bin", payload("model", 5000))
    r = cais("start", "download", origin.url_for("/model.bin"),
             "s3://no-such-bucket-here/model.bin", check=False)
    assert r.returncode == 2
    assert r.stderr.strip() == 'Error: aws bucket "s3://no-such-bucket-here" does not exist'
    assert "Warning" not in r.stderr  # nothing claims the bucket will be created
    assert cais("show", "job", "download", "--json").stdout.strip() in ("[]", "")


def test_listing_failure_is_one_clear_job_error(s3_server, cloud_node):
    """A missing bucket is refused at the start; one that disappears while the job lists it
    (pages of 1,000) ends the job with one error that says why."""
    from aisdl.errors import NotFound

    c = cloud_node.client()
    with pytest.raises(NotFound, match='aws bucket "s3://no-such-bucket-x" does not exist'):
        c.start_download({"type": "backend",
                          "bucket": {"name": "no-such-bucket-x", "provider": "aws"}})
    assert not [j for j in c.list_downloads() if "no-such-bucket-x" in j["description"]]
    src = s3_server.new_bucket(versioned=False)
    keys = [f"o{i:04d}" for i in range(1200)]
    s3_server.put_many(src, [(k, b"x" * 512) for k in keys])
    # Throttled to about an object a second while the objects exist, so the job is still on
    # its first page when they go (unthrottled, a busy machine let it reach the second page
    # before the deletes did); the rest of that page then fails fast, object by object.
    job = c.start_download({"type": "backend", "bucket": {"name": src, "provider": "aws"},
                            "limits": {"connections": 4, "bytes_per_hour": 512 * 3600}})
    for i in range(0, len(keys), 1000):
        s3_server.client.delete_objects(
            Bucket=src, Delete={"Objects": [{"Key": k} for k in keys[i:i + 1000]]})
    s3_server.client.delete_bucket(Bucket=src)
    st = wait_job(c, job, timeout=120)
    listing = [e for e in st["download_errors"] if e["error"].startswith("listing failed:")]
    assert len(listing) == 1 and listing[0]["name"] == f"s3://{src}"
    assert "does not exist" in listing[0]["error"]
    assert st["finished_cnt"] < len(keys)


def test_upstream_backend_prefix_suffix_and_abort(s3_server, cloud_node):
    """Upstream scenario 7: a backend job with prefix and suffix, evictions, then an abort."""
    c = cloud_node.client()
    src = s3_server.new_bucket()
    wanted = [f"imagenet/imagenet_train-{i:05d}.tgz" for i in range(5)]
    s3_server.put_many(src, [(n, payload(n, 200)) for n in wanted]
                       + [("imagenet/imagenet_train-00001.txt", b"x"), ("other/a.tgz", b"y")])
    c.create_bucket(_ais("seven"))
    c.set_bucket_props(_ais("seven"), {"backend_bck": {"name": src, "provider": "aws"}})
    body = {"type": "backend", "bucket": {"name": "seven"}, "prefix": "imagenet/imagenet_train-",
            "suffix": ".tgz", "description": "scenario-7"}
    assert wait_job(c, c.start_download(body))["finished_cnt"] == 5
    assert [e["n"] for e in c.list_objects(_ais("seven"), cached=True)] == wanted
    for n in wanted:
        c.delete_object(_ais("seven"), n)  # evict the cached copies
    s3_server.put_many(src, [(f"imagenet/imagenet_train-{i:05d}.tgz", payload(str(i), 20_000))
                             for i in range(5, 3000)])
    job = c.start_download(body)
    c.abort_download(job)
    st = wait_job(c, job)
    assert st["aborted"] and st["finished_cnt"] < 3000
    assert len(c.list_downloads(regex="^scenario-7$")) == 2


def test_upstream_checksummed_sources(origin, cloud_node):
    """Upstream scenarios 10-12: sources that send MD5/CRC32C (x-goog-hash); the MD5 is
    verified on arrival and the objects read back intact, for single, multi and range jobs."""
    c = cloud_node.client()
    for v in (21, 23, 25):
        origin.add(f"/minikube-v0.{v}.0.iso.sha256", payload(str(v), 65), gcs=True)
    link = origin.url_for("/minikube-v0.21.0.iso.sha256")
    template = origin.url_for("/") + "minikube-v0.{21..25..2}.0.iso.sha256"
    jobs = [c.start_download({"type": "single", "bucket": {"name": "ck"}, "link": link}),
            c.start_download({"type": "multi", "bucket": {"name": "ck2"},
                              "objects": {"a": link, "b": origin.url_for(
                                  "/minikube-v0.23.0.iso.sha256")}}),
            c.start_download({"type": "range", "bucket": {"name": "ck3"}, "template": template})]
    assert [wait_job(c, j)["finished_cnt"] for j in jobs] == [1, 2, 3]
    assert c.get_object(_ais("ck3"), "minikube-v0.25.0.iso.sha256").content == payload("25", 65)
    assert c.head_object(_ais("ck2"), "b")["Content-Length"] == "65"
