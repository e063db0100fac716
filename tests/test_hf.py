"""Hugging Face Hub downloads (`--hf-model`, `--hf-dataset`, type "hf" of /v1/download) against
a fake Hub (tests/fake_hub.py) whose faithfulness huggingface_hub itself proves: its
`snapshot_download` and our job must store the same bytes."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from aisdl.client import Client
from aisdl.errors import AisdlError, BadRequest
from aisdl.jobs.request import parse_start_request
from aisdl.models import Bucket
from aisdl.sources.hf import hub_token
from conftest import Ais, Node
from fake_hub import FakeHub, Virtual
from helpers import free_port, wait_job

TOKEN_VARS = ("HF_TOKEN", "HUGGING_FACE_HUB_TOKEN", "HF_TOKEN_PATH", "HF_HOME", "HF_ENDPOINT",
              "XDG_CACHE_HOME")
GOOD, OTHER = "hf_goodtoken0123456789", "hf_othertoken9876543210"
MODEL_FILES: dict[str, bytes | Virtual] = {
    ".gitattributes": b"*.safetensors filter=lfs diff=lfs merge=lfs -text\n",
    "README.md": b"# a model\n",
    "config.json": b'{"hidden_size": 8}',
    "model.safetensors": Virtual(3_000_000, "weights"),
    "onnx/model.onnx": Virtual(700_000, "onnx"),
    "tokenizer/vocab.txt": b"a\nb\nc\n",
}
MODEL_LFS = {"model.safetensors", "onnx/model.onnx"}


@pytest.fixture(scope="module")
def hub() -> Iterator[FakeHub]:
    with FakeHub(page_size=3) as h:  # pages of 3: every listing here has several
        h.add_repo("org/model", MODEL_FILES, lfs=MODEL_LFS, tag="v1")
        h.add_repo("org/private", {"w.bin": Virtual(400_000, "private"), "a.txt": b"secret"},
                   lfs={"w.bin"}, private=True, tokens={GOOD})
        h.add_repo("org/gated", {"w.bin": Virtual(10_000, "gated")}, lfs={"w.bin"},
                   gated=True, tokens={GOOD})
        h.known_tokens.add(OTHER)
        h.add_repo("org/data", {"train/0.parquet": Virtual(200_000, "train"),
                                "test/0.parquet": b"PAR1 test", "README.md": b"data"},
                   repo_type="dataset", lfs={"train/0.parquet"}, tag="v2")
        yield h


@pytest.fixture(scope="module")
def hf_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """No Hugging Face token or endpoint from the machine running the tests."""
    root = tmp_path_factory.mktemp("hf")
    with pytest.MonkeyPatch.context() as mp:
        for var in TOKEN_VARS:
            mp.delenv(var, raising=False)
        mp.setenv("HF_HOME", str(root / "hf-home"))  # no token file there
        mp.setenv("HF_HUB_DISABLE_TELEMETRY", "1")  # huggingface_hub talks to our fake only
        yield root


@pytest.fixture(scope="module")
def hf_node(hub: FakeHub, hf_env: Path) -> Iterator[Node]:
    node = Node(free_port(), hf_env / "home", hf_env / "node.log",
                extra_args=("--retry-delay", "50ms"), env={"HF_ENDPOINT": hub.url})
    node.start()
    yield node
    node.stop()


@pytest.fixture(scope="module")
def hf_ais(hf_node: Node, hf_env: Path) -> Ais:
    (hf_env / "cli-home").mkdir(exist_ok=True)
    return Ais(hf_node, hf_env / "cli-home", hf_env)


def _objects(client: Client, bck: Bucket, prefix: str = "") -> dict[str, bytes]:
    return {e["n"]: client.get_object(bck, e["n"]).content
            for e in client.list_objects(bck, prefix)}


def _snapshot(hub: FakeHub, repo: str, where: Path, **kw: Any) -> dict[str, bytes]:
    from huggingface_hub import snapshot_download

    snapshot_download(repo, endpoint=hub.url, local_dir=where, **kw)
    return {str(p.relative_to(where)): p.read_bytes() for p in sorted(where.rglob("*"))
            if p.is_file() and ".cache" not in p.relative_to(where).parts}


def _start(hf_ais: Ais, *args: str) -> str:
    return hf_ais("start", "download", *args).stdout.splitlines()[0].strip()


def test_model_is_stored_as_snapshot_download_stores_it(hub: FakeHub, hf_ais: Ais,
                                                        hf_node: Node, tmp_path: Path) -> None:
    """Every file of the repository, under DEST's path, byte for byte what huggingface_hub
    downloads from the same (fake) Hub; LFS files come from the separate file store."""
    hub.clear_log()
    job = _start(hf_ais, "--hf-model", "org/model", "ais://hfm/models/m/")
    st = wait_job(hf_node, job)
    assert (st["finished_cnt"], st["error_cnt"], st["total"]) == (6, 0, -1), st
    ours = _objects(hf_node.client(), Bucket("ais", "hfm"))
    theirs = _snapshot(hub, "org/model", tmp_path / "snap", token=False)
    assert ours == {f"models/m/{k}": v for k, v in theirs.items()}
    assert set(theirs) == set(MODEL_FILES)
    stored = {r.path.split("?")[0] for r in hub.requests("store")}
    assert stored == {f"/blobs/{hub.blob_of('org/model', p)}" for p in MODEL_LFS}


def test_private_token_goes_to_the_hub_only_and_is_never_kept(
        hub: FakeHub, hf_ais: Ais, hf_node: Node, tmp_path: Path) -> None:
    """The token reaches the Hub (API and resolve) and never the file store it redirects to,
    on libcurl and on the throttled (aiohttp) path alike; it is in no status, log or database
    file of the node."""
    hub.clear_log()
    job = _start(hf_ais, "--hf-model", "org/private", "--hf-auth", GOOD, "ais://hfp/")
    client = hf_node.client()
    throttled = client.start_download({
        "type": "hf", "bucket": {"name": "hfp2", "provider": "ais"}, "hf_model": "org/private",
        "hf_auth": GOOD, "limits": {"bytes_per_hour": 1 << 40}})
    for j in (job, throttled):
        st = wait_job(hf_node, j)
        assert (st["finished_cnt"], st["error_cnt"]) == (2, 0), st
    theirs = _snapshot(hub, "org/private", tmp_path / "snap", token=GOOD)
    assert _objects(client, Bucket("ais", "hfp")) == theirs
    assert _objects(client, Bucket("ais", "hfp2")) == theirs
    store = hub.requests("store")
    assert len(store) >= 3  # ours twice, huggingface_hub's once
    assert all("Authorization" not in r.headers for r in store)
    resolves = [r for r in hub.requests("hub") if "/resolve/" in r.path]
    assert resolves and all(r.headers.get("Authorization") == f"Bearer {GOOD}"
                            for r in resolves)
    shown = hf_ais("show", "job", "download", job, "--json").stdout
    shown += json.dumps([client.download_status(j) for j in (job, throttled)])
    shown += json.dumps(client.list_downloads())
    assert GOOD not in shown
    assert GOOD not in hf_node.log()
    for f in hf_node.home.rglob("*"):
        if f.is_file() and not f.suffix == ".bin" and f.stat().st_size < 64 << 20:
            assert GOOD.encode() not in f.read_bytes(), f


@pytest.mark.parametrize(("body", "status", "words"), [
    ({"hf_model": "org/nope"}, 404, "model 'org/nope' not found at http://127.0.0.1:"),
    ({"hf_model": "org/private"}, 404, "or it is private: give a token with --hf-auth"),
    ({"hf_model": "org/private", "hf_auth": OTHER}, 404, "the Hub refused the token"),
    ({"hf_model": "org/model", "hf_revision": "nope"}, 404,
     "revision 'nope' not found in Hugging Face model 'org/model'"),
    ({"hf_model": "org/model", "hf_file": "nope.json"}, 404, "file 'nope.json' not found"),
    ({"hf_model": "org/gated"}, 403, "model 'org/gated' is gated"),
    ({"hf_model": "org/gated", "hf_auth": OTHER}, 403, "is gated"),
    ({"hf_model": "org/model", "hf_auth": "hf_unknown"}, 403, "refused the token: invalid"),
    ({"hf_dataset": "org/model"}, 404, "dataset 'org/model' not found"),
])
def test_hub_refusals_are_one_error_at_start(hf_node: Node, body: dict[str, Any], status: int,
                                             words: str) -> None:
    client = hf_node.client()
    before = len(client.list_downloads())
    with pytest.raises(AisdlError) as err:
        client.start_download({"type": "hf", "bucket": {"name": "hfe", "provider": "ais"},
                               **body})
    assert err.value.status == status
    assert words in err.value.message
    assert len(client.list_downloads()) == before  # no job


def test_cli_refusal_is_one_error_line(hf_ais: Ais) -> None:
    r = hf_ais("start", "download", "--hf-model", "org/gated", "ais://hfe/", check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("Error: Hugging Face model 'org/gated' is gated")
    assert len(r.stderr.strip().splitlines()) == 1
    r = hf_ais("start", "download", "--hf-model", "org/model", "https://x/y", "ais://hfe/",
               check=False)
    assert r.returncode == 2 and "provide only the destination argument" in r.stderr


def test_cli_sends_the_token_huggingface_hub_would_use(hub: FakeHub, hf_ais: Ais,
                                                       hf_node: Node, tmp_path: Path) -> None:
    """Without --hf-auth, the user's token file (HF_TOKEN_PATH, as huggingface_hub reads it)."""
    token_file = tmp_path / "token"
    token_file.write_text(GOOD + "\n")
    out = hf_ais("start", "download", "--hf-model", "org/private", "ais://hft/",
                 env={"HF_TOKEN_PATH": str(token_file)})
    st = wait_job(hf_node, out.stdout.split()[0])
    assert (st["finished_cnt"], st["error_cnt"]) == (2, 0), st


def test_rerun_skips_unchanged_files_and_fetches_changed_ones(hub: FakeHub, hf_ais: Ais,
                                                              hf_node: Node) -> None:
    hub.add_repo("org/evolving", {"a.txt": b"one", "b.txt": b"two",
                                  "w.bin": Virtual(500_000, "w1"),
                                  "v.bin": Virtual(500_000, "v1")}, lfs={"w.bin", "v.bin"})
    bck = Bucket("ais", "hfr")
    st = wait_job(hf_node, _start(hf_ais, "--hf-model", "org/evolving", "ais://hfr"))
    assert (st["finished_cnt"], st["skipped_cnt"]) == (4, 0), st
    hub.clear_log()
    st = wait_job(hf_node, _start(hf_ais, "--hf-model", "org/evolving", "ais://hfr"))
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (4, 4, 0), st
    # the start probes one file (HEAD); no file is fetched again
    assert not [r for r in hub.requests() if r.method == "GET" and (
        "/resolve/" in r.path or r.site == "store")]
    hub.commit("org/evolving", {"a.txt": b"ONE!", "w.bin": Virtual(500_000, "w2")},
               lfs={"w.bin"})
    hub.clear_log()
    st = wait_job(hf_node, _start(hf_ais, "--hf-model", "org/evolving", "ais://hfr"))
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (4, 2, 0), st
    fetched = sorted(r.path.rsplit("/", 1)[1] for r in hub.requests("hub")
                     if "/resolve/" in r.path and r.method == "GET")
    assert fetched == ["a.txt", "w.bin"]
    got = _objects(hf_node.client(), bck)
    assert got["a.txt"] == b"ONE!"
    assert got["w.bin"] == hub.content("org/evolving", "w.bin")


def test_one_file_of_a_dataset_at_a_tag(hub: FakeHub, hf_ais: Ais, hf_node: Node) -> None:
    st = wait_job(hf_node, _start(hf_ais, "--hf-dataset", "org/data", "--hf-file",
                                  "train/0.parquet", "--hf-revision", "v2", "ais://hfd/sq/"))
    assert (st["finished_cnt"], st["error_cnt"], st["total"]) == (1, 0, 1), st
    assert _objects(hf_node.client(), Bucket("ais", "hfd")) == {
        "sq/train/0.parquet": hub.content("org/data", "train/0.parquet", "dataset")}


# Blob downloads fetch a big file in ranged parts: its sha256 is checked all the same
BLOB = {"blob-threshold": 16 << 10, "blob-num-workers": 4}


@pytest.mark.parametrize("blob", [False, True], ids=["stream", "blob"])
def test_bytes_that_do_not_match_the_sha256_are_not_stored(hub: FakeHub, hf_node: Node,
                                                           blob: bool) -> None:
    repo, bck = f"org/corrupt-{blob}", f"hfc-{int(blob)}"
    hub.add_repo(repo, {"w.bin": Virtual(100_000, "c"), "ok.txt": b"ok"}, lfs={"w.bin"})
    hub.corrupt.add(hub.blob_of(repo, "w.bin"))
    client = hf_node.client()
    job = client.start_download({"type": "hf", "bucket": {"name": bck, "provider": "ais"},
                                 "hf_model": repo, **(BLOB if blob else {})})
    st = wait_job(hf_node, job)
    assert (st["finished_cnt"], st["error_cnt"]) == (1, 1), st
    assert "SHA-256" in st["download_errors"][0]["error"]
    assert set(_objects(client, Bucket("ais", bck))) == {"ok.txt"}


def test_a_blob_rerun_skips_what_the_listing_proves_unchanged(hub: FakeHub, hf_node: Node) -> None:
    hub.add_repo("org/big", {"w.bin": Virtual(300_000, "b"), "a.txt": b"a"}, lfs={"w.bin"})
    client = hf_node.client()
    body = {"type": "hf", "bucket": {"name": "hfb", "provider": "ais"}, "hf_model": "org/big",
            **BLOB}
    st = wait_job(hf_node, client.start_download(body))
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (2, 0, 0), st
    assert _objects(client, Bucket("ais", "hfb"))["w.bin"] == hub.content("org/big", "w.bin")
    hub.clear_log()
    st = wait_job(hf_node, client.start_download(body))
    assert (st["finished_cnt"], st["skipped_cnt"], st["error_cnt"]) == (2, 2, 0), st
    assert not [r for r in hub.requests() if r.method == "GET" and r.site == "store"]


# -- pure decisions --------------------------------------------------------------------------
def test_token_is_found_where_huggingface_hub_finds_it(tmp_path: Path) -> None:
    home, path = tmp_path / "home", tmp_path / "elsewhere"
    home.mkdir()
    (home / "token").write_text(" hf_from_home\n")
    path.write_text("hf_from_path\n")
    cases = [
        ({"HF_TOKEN": "hf_env", "HF_HOME": str(home)}, "hf_env"),
        ({"HUGGING_FACE_HUB_TOKEN": "hf_old", "HF_HOME": str(home)}, "hf_old"),
        ({"HF_TOKEN_PATH": str(path), "HF_HOME": str(home)}, "hf_from_path"),
        ({"HF_HOME": str(home)}, "hf_from_home"),
        ({"XDG_CACHE_HOME": str(tmp_path / "none")}, ""),
    ]
    for env, token in cases:
        assert hub_token(env) == token, env


@pytest.mark.parametrize(("body", "words"), [
    ({}, "one repository: 'hf_model' or 'hf_dataset'"),
    ({"hf_model": "a/b", "hf_dataset": "c/d"}, "one repository"),
    ({"hf_model": "a/b/c"}, "invalid Hugging Face repository id"),
    ({"hf_model": "a--b"}, "invalid Hugging Face repository id"),
    ({"hf_model": "a/b", "hf_file": "../x"}, "invalid file name"),
    ({"hf_model": "a/b", "hf_revision": "main\n"}, "invalid Hugging Face revision"),
    ({"hf_model": "a/b", "hf_auth": "x\r\nHost: evil"}, "'hf_auth' contains a control"),
    ({"hf_model": "a/b", "template": "http://x/{1..2}"}, "'template' does not apply"),
])
def test_bad_hf_requests_are_refused(body: dict[str, Any], words: str) -> None:
    raw = json.dumps({"type": "hf", "bucket": {"name": "b"}, **body}).encode()
    with pytest.raises(BadRequest, match=None) as err:
        parse_start_request(raw, 64)
    assert words in err.value.message


def test_the_token_is_not_in_the_stored_job() -> None:
    raw = json.dumps({"type": "hf", "bucket": {"name": "b"}, "hf_model": "a/b",
                      "hf_auth": GOOD}).encode()
    spec = parse_start_request(raw, 64)
    assert spec.hf_token == GOOD
    assert GOOD not in spec.to_json() and GOOD not in repr(spec)


def test_a_job_resumes_after_a_restart_at_its_commit(hub: FakeHub, hf_ais: Ais,
                                                     hf_node: Node) -> None:
    """Stopped mid-way, the job resumes at the commit its revision named when it started, even
    though `main` has moved on since (the last test of the module: it restarts the node)."""
    hub.add_repo("org/slow", {"a.bin": Virtual(900_000, "s1"), "b.bin": Virtual(900_000, "s2"),
                              "c.txt": b"as it was"}, lfs={"a.bin", "b.bin"})
    hub.rate = 300_000  # bytes/s per file-store response: 3 s a file
    try:
        job = _start(hf_ais, "--hf-model", "org/slow", "ais://hfs")
        client = hf_node.client()
        deadline = time.monotonic() + 20
        while not client.download_status(job).get("current_tasks"):
            assert time.monotonic() < deadline, "no transfer started"
            time.sleep(0.05)
        hub.commit("org/slow", {"c.txt": b"changed since"})
        hf_node.restart()
        st = wait_job(hf_node, job, timeout=40)
    finally:
        hub.rate = 0
    assert (st["finished_cnt"], st["error_cnt"], st["total"]) == (3, 0, 3), st
    got = _objects(hf_node.client(), Bucket("ais", "hfs"))
    assert got["c.txt"] == b"as it was"
    assert got["a.bin"] == Virtual(900_000, "s1").read(0, 900_000)
