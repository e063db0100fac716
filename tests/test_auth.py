"""AIS AuthN tokens: a node started with --auth-secret / --auth-public-key answers only requests
whose token holds and grants the route; refusals change nothing and leave an audit line."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
import requests
from aistore.sdk import Client as SdkClient
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from jwt.warnings import InsecureKeyLengthWarning

from aisdl.api.auth import CLUSTER_RO, OPEN_ROUTES, RO, RW, Access, Claims, parse_claims
from aisdl.models import Bucket
from conftest import Ais, Node
from helpers import free_port, is_finished
from helpers_tls import TlsNode, make_cert
from origin import payload
from test_api_sweep import SAMPLE_ORDER, app_routes, samples, snapshot

SECRET = b"test-secret-of-thirty-two-bytes-or-more"
ALL = str((1 << 18) - 1)


def token(claims: dict[str, Any], key: bytes = SECRET, alg: str = "HS256",
          expires: float = 3600) -> str:
    full = {"sub": "alice", "exp": int(time.time() + expires), **claims}
    return jwt.encode(full, key, algorithm=alg)


def bucket_acl(name: str, perm: int) -> dict[str, Any]:
    return {"bck": {"name": name, "provider": "ais", "namespace": {"uuid": "", "name": ""}},
            "perm": str(perm)}


# The matrix's tokens: header value (None: no header).
TOKENS: dict[str, str | None] = {
    "none": None,
    "malformed": "Bearer not.a.jwt",
    "bad signature": "Bearer " + token({"admin": True}, key=b"another-secret-of-32-bytes-or-more!"),
    "expired": "Bearer " + token({"admin": False, "clusters": [{"id": "", "perm": ALL}]},
                                 expires=-60),
    "other cluster": "Bearer " + token({"clusters": [{"id": "Cother", "perm": ALL}],
                                        "buckets": [{**bucket_acl("sweep", RW),
                                                     "bck": {"name": "sweep",
                                                             "provider": "ais",
                                                             "namespace": {"uuid": "Cother"}}}]}),
    "read-only": "Bearer " + token({"clusters": [{"id": "", "perm": str(int(CLUSTER_RO | RO))}]}),
    "other bucket": "Bearer " + token({"buckets": [bucket_acl("elsewhere", RW)]}),
    "admin": "Bearer " + token({"admin": True}),
}
ADMIN = TOKENS["admin"]
# What a read-only token may do; everything else is 403 for it.
READ_ONLY_ALLOWED = {("GET", "/v1/buckets"), ("GET", "/v1/buckets/{bucket}"),
                     ("HEAD", "/v1/buckets/{bucket}"), ("GET", "/v1/objects/{bucket}/{name}"),
                     ("HEAD", "/v1/objects/{bucket}/{name}"), ("GET", "/v1/daemon"),
                     ("GET", "/v1/cluster"), ("GET", "/v1/download"), ("HEAD", "/v1/download"),
                     ("GET", "/v1/health"), ("GET", "/ui/api/jobs/{id}"),
                     ("GET", "/metrics")}


def expected(kind: str, route: tuple[str, str]) -> int:
    if route in OPEN_ROUTES:  # health, and the dashboard's page (which asks for a token)
        return 200
    if kind in ("none", "malformed", "bad signature", "expired", "other cluster"):
        return 401
    if kind == "read-only":
        return 200 if route in READ_ONLY_ALLOWED else 403
    if kind == "other bucket":
        return 403
    return 200


def session(auth: str | None) -> requests.Session:
    s = requests.Session()
    s.trust_env = False
    if auth:
        s.headers["Authorization"] = auth
    return s


@pytest.fixture
def secret_file(tmp_path: Path) -> Path:
    path = tmp_path / "secret"
    path.write_bytes(SECRET + b"\n")
    return path


@pytest.fixture
def auth_node(tmp_path: Path, secret_file: Path) -> Iterator[Node]:
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--auth-secret", str(secret_file)))
    yield from _running(n)


@pytest.fixture(params=["http", "https"])
def any_auth_node(request: pytest.FixtureRequest, tmp_path: Path,
                  secret_file: Path) -> Iterator[Node]:
    """A node checking tokens, over plain http or over HTTPS with a self-signed certificate
    (its `cert` attribute: the CA its clients trust)."""
    args = ("--auth-secret", str(secret_file))
    if request.param == "http":
        n = Node(free_port(), tmp_path / "home", tmp_path / "node.log", extra_args=args)
    else:
        n = TlsNode(free_port(), tmp_path / "home", tmp_path / "node.log",
                    *make_cert(tmp_path), more_args=args)
    yield from _running(n)


def _running(n: Node) -> Iterator[Node]:
    n.start()
    try:
        yield n
    finally:
        n.proc.terminate()  # type: ignore[union-attr]
        n.proc.wait(15)  # type: ignore[union-attr]


def wait_done(s: requests.Session, endpoint: str, job: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        st = s.get(f"{endpoint}/v1/download", json={"id": job}, timeout=10).json()
        if is_finished(st):
            return
        time.sleep(0.1)
    pytest.fail(f"job {job} did not finish")


def test_every_route_with_every_kind_of_token(auth_node: Node, origin: Any,
                                              tmp_path: Path) -> None:
    endpoint = auth_node.endpoint
    origin.add("/file.bin", payload("file", 1000))
    admin = session(ADMIN)
    for bucket in ("sweep", "victim"):
        admin.post(f"{endpoint}/v1/buckets/{bucket}", json={"action": "create-bck"},
                   timeout=10).raise_for_status()
    admin.put(f"{endpoint}/v1/objects/sweep/obj", data=b"object bytes",
              timeout=10).raise_for_status()
    job = admin.post(f"{endpoint}/v1/download", json={
        "type": "single", "bucket": {"name": "sweep"}, "link": origin.url_for("/file.bin"),
        "object_name": "fetched"}, timeout=10).json()["id"]
    wait_done(admin, endpoint, job)
    before = snapshot(admin, endpoint)
    routes = app_routes(tmp_path / "routes")
    base = samples(job, origin.url_for("/file.bin"))
    order = sorted(routes, key=lambda r: (r == ("PUT", "/v1/daemon"), SAMPLE_ORDER.index(r[0])))
    tried = 0
    for kind, auth in TOKENS.items():
        if kind == "admin":
            continue  # last: its samples change the store
        s = session(auth)
        for route in order:
            r = base[route].send(s, endpoint)
            want = expected(kind, route)
            got = 200 if r.status_code < 300 else r.status_code
            assert got == want, f"{kind} token, {route}: {r.status_code} {r.text[:300]}"
            if want in (401, 403) and route[0] != "HEAD":
                assert json.loads(r.text)["status"] == want
            tried += 1
        after = snapshot(admin, endpoint)
        assert after == before, f"a {kind} token changed: {_differences(before, after)}"
    s = session(ADMIN)
    for route in order:
        r = base[route].send(s, endpoint)
        assert r.status_code < 300, f"admin token, {route}: {r.status_code} {r.text[:300]}"
    print(f"\n{tried + len(order)} requests: {len(routes)} routes x {len(TOKENS)} tokens")
    log = auth_node.log()
    assert "refused 401: sub=- GET /v1/buckets" in log
    assert "refused 403: sub=alice PUT /v1/objects/sweep/obj" in log
    assert "admin action: sub=alice PUT /v1/daemon" in log


def _differences(before: dict[str, Any], after: dict[str, Any]) -> str:
    def items(snap: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for key, value in snap.items():
            if isinstance(value, tuple):
                out[f"{key} props"] = value[0]
                out.update({f"{key}/{name}": obj for name, obj in value[1].items()})
            else:
                out[key] = value
        return out

    b, a = items(before), items(after)
    return "; ".join(f"{key}: {b.get(key)!r} -> {a.get(key)!r}" for key in sorted(set(b) | set(a))
                     if b.get(key) != a.get(key))


def test_refusals_say_why(auth_node: Node) -> None:
    url = f"{auth_node.endpoint}/v1/buckets"
    cases = {
        None: "missing token",
        "Basic abc": "malformed Authorization",
        TOKENS["expired"]: "token expired",
        TOKENS["bad signature"]: "invalid token signature",
        TOKENS["other cluster"]: "not valid for cluster",
        "Bearer " + token({"admin": True, "nbf": int(time.time() + 10 * 365 * 86400)}):
            "not yet valid",
        "Bearer " + _unsigned({"sub": "mallory", "admin": True,
                               "exp": int(time.time() + 3600)}): "not signed with HS256",
        "Bearer " + jwt.encode({"admin": True, "exp": int(time.time() + 3600)}, SECRET):
            "no subject",
        "Bearer " + jwt.encode({"sub": "a", "admin": True}, SECRET): "exp",
    }
    for auth, reason in cases.items():
        r = session(auth).get(url, json={"action": "list"}, timeout=10)
        assert r.status_code == 401, (auth, r.text)
        assert reason in r.json()["message"], (auth, r.text)
        assert r.headers["WWW-Authenticate"].startswith("Bearer")
    r = session(TOKENS["other bucket"]).put(f"{auth_node.endpoint}/v1/objects/b/o", data=b"x",
                                            timeout=10)
    assert r.status_code == 403 and "no put access on bucket ais://b" in r.json()["message"]


def _unsigned(claims: dict[str, Any]) -> str:
    def part(obj: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(obj).encode()).rstrip(b"=").decode()
    return f"{part({'alg': 'none', 'typ': 'JWT'})}.{part(claims)}."


def test_bucket_token_grants_its_bucket_only(auth_node: Node, origin: Any) -> None:
    endpoint = auth_node.endpoint
    origin.add("/f", payload("f", 100))
    admin = session(ADMIN)
    for bucket in ("mine", "theirs"):
        admin.post(f"{endpoint}/v1/buckets/{bucket}", json={"action": "create-bck"},
                   timeout=10).raise_for_status()
    rw = session("Bearer " + token({"buckets": [bucket_acl("mine", RW)]}))
    assert rw.put(f"{endpoint}/v1/objects/mine/o", data=b"x", timeout=10).status_code == 200
    assert rw.get(f"{endpoint}/v1/objects/mine/o", timeout=10).content == b"x"
    assert rw.put(f"{endpoint}/v1/objects/theirs/o", data=b"x", timeout=10).status_code == 403
    start = {"type": "single", "link": origin.url_for("/f"), "object_name": "f"}
    r = rw.post(f"{endpoint}/v1/download", json={**start, "bucket": {"name": "mine"}}, timeout=10)
    assert r.status_code == 200, r.text
    mine = r.json()["id"]
    theirs = admin.post(f"{endpoint}/v1/download", json={**start, "bucket": {"name": "theirs"}},
                        timeout=10).json()["id"]
    # Its own job's status, abort and removal; not another bucket's job, nor the list of all.
    assert rw.get(f"{endpoint}/v1/download", json={"id": mine}, timeout=10).status_code == 200
    assert rw.get(f"{endpoint}/v1/download", json={"id": theirs}, timeout=10).status_code == 403
    assert rw.get(f"{endpoint}/v1/download", json={}, timeout=10).status_code == 403
    assert rw.delete(f"{endpoint}/v1/download/remove", json={"id": theirs},
                     timeout=10).status_code == 403
    assert admin.get(f"{endpoint}/v1/download", json={"id": theirs}, timeout=10).ok
    assert rw.delete(f"{endpoint}/v1/download/abort", json={"id": mine},
                     timeout=10).status_code == 200
    assert rw.get(f"{endpoint}/v1/download", json={"id": "nosuchjob"},
                  timeout=10).status_code == 403
    r = rw.post(f"{endpoint}/v1/download", json={**start, "bucket": {"name": "theirs"}},
                timeout=10)
    assert r.status_code == 403, r.text
    # A copy reads here and writes there: both must be granted.
    r = rw.put(f"{endpoint}/v1/objects/mine/o", params={"object_to": "ais/@#/theirs/o"},
               timeout=10)
    assert r.status_code == 403, r.text
    assert admin.get(f"{endpoint}/v1/objects/theirs/o", timeout=10).status_code == 404


def test_rs256_node_accepts_only_its_key_pair(tmp_path: Path) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    pem_file = tmp_path / "pub.pem"
    pem_file.write_bytes(public_pem)
    n = Node(free_port(), tmp_path / "home", tmp_path / "node.log",
             extra_args=("--auth-public-key", str(pem_file)))
    n.start()
    try:
        url = f"{n.endpoint}/v1/daemon"
        good = token({"admin": True}, key=private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption()), alg="RS256")
        assert session("Bearer " + good).get(url, params={"what": "smap"},
                                             timeout=10).status_code == 200
        # HS256 "signed" with the public key a client can read: algorithm switching.
        header = base64.urlsafe_b64encode(b'{"alg":"HS256","typ":"JWT"}').rstrip(b"=")
        body = base64.urlsafe_b64encode(json.dumps(
            {"sub": "mallory", "admin": True, "exp": int(time.time() + 3600)}).encode()
        ).rstrip(b"=")
        import hashlib
        import hmac

        sig = base64.urlsafe_b64encode(hmac.new(public_pem, header + b"." + body,
                                                hashlib.sha256).digest()).rstrip(b"=")
        forged = (header + b"." + body + b"." + sig).decode()
        r = session("Bearer " + forged).get(url, params={"what": "smap"}, timeout=10)
        assert r.status_code == 401 and "RS256" in r.json()["message"], r.text
        r = session("Bearer " + token({"admin": True})).get(url, params={"what": "smap"},
                                                            timeout=10)
        assert r.status_code == 401, r.text
    finally:
        n.proc.terminate()  # type: ignore[union-attr]
        n.proc.wait(15)  # type: ignore[union-attr]


def test_sdk_with_a_token(any_auth_node: Node, monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "AIS_AUTHN_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    assert ADMIN is not None
    auth_node, ca = any_auth_node, getattr(any_auth_node, "cert", None)
    sdk = SdkClient(auth_node.endpoint, token=ADMIN.removeprefix("Bearer "),
                    ca_cert=str(ca) if ca else None)
    sdk.bucket("sdkb").create()
    sdk.bucket("sdkb").object("o").get_writer().put_content(b"hello")
    assert sdk.bucket("sdkb").object("o").get_reader().read_all() == b"hello"
    anonymous = SdkClient(auth_node.endpoint, ca_cert=str(ca) if ca else None)
    with pytest.raises(Exception, match="401|missing token"):
        anonymous.bucket("sdkb").object("o").get_reader().read_all()


def test_cli_sends_the_token_from_each_source(any_auth_node: Node, tmp_path: Path,
                                              secret_file: Path) -> None:
    cli = Ais(any_auth_node, tmp_path / "cli-home", tmp_path)
    if ca := getattr(any_auth_node, "cert", None):
        cli.env["AIS_CLIENT_CA"] = str(ca)
    (tmp_path / "cli-home").mkdir()
    made = cli("auth", "token", "create", "--secret", secret_file, "--user", "carol",
               "--cluster", "rw", "--expires", "1h").stdout.strip()
    claims = jwt.decode(made, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "carol" and claims["exp"] - time.time() > 3500
    unset = {"AIS_AUTHN_TOKEN": None, "AIS_AUTHN_TOKEN_FILE": None}
    r = cli("bucket", "create", "ais://nobody", check=False, env=unset)
    assert r.returncode == 2 and "missing token" in r.stderr, r.output
    assert "Traceback" not in r.output
    cli("bucket", "create", "ais://viaenv", env={**unset, "AIS_AUTHN_TOKEN": made})
    token_file = tmp_path / "tok.json"
    token_file.write_text(json.dumps({"token": made}))
    cli("bucket", "create", "ais://viafile", env={**unset, "AIS_AUTHN_TOKEN_FILE": str(token_file)})
    default = tmp_path / "cli-home" / ".config" / "ais" / "cli" / "auth.token"
    default.parent.mkdir(parents=True)
    default.write_text(json.dumps({"token": made}))
    cli("bucket", "create", "ais://viadefault", env=unset)
    listed = cli("ls", env=unset).stdout
    assert all(b in listed for b in ("viaenv", "viafile", "viadefault"))
    r = cli("ls", check=False, env={**unset, "AIS_AUTHN_TOKEN_FILE": str(tmp_path / "none")})
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_token_create_refuses_bad_input(tmp_path: Path, secret_file: Path) -> None:
    cli = Ais(Node(free_port(), tmp_path / "h", tmp_path / "l"), tmp_path, tmp_path)
    for args, message in (((), "grant nothing"), (("--bucket", "mine:ro"), "expected"),
                          (("--bucket", "ais://b:xx"), "expected"),
                          (("--admin", "--expires", "0s"), "more than 0")):
        r = cli("auth", "token", "create", "--secret", secret_file, "--user", "u", *args,
                check=False)
        assert r.returncode == 2 and message in r.stderr and "Traceback" not in r.output, r


@pytest.mark.parametrize(("claims", "bucket", "need", "granted"), [
    ({"admin": True}, None, Access.ADMIN, True),
    ({"clusters": [{"id": "", "perm": str(int(CLUSTER_RO | RO))}]}, Bucket("ais", "b"),
     Access.GET, True),
    ({"clusters": [{"id": "", "perm": str(int(CLUSTER_RO | RO))}]}, Bucket("ais", "b"),
     Access.PUT, False),
    # A bucket's own grant overrides the cluster's, both ways.
    ({"clusters": [{"id": "", "perm": str(int(RW))}], "buckets": [bucket_acl("b", RO)]},
     Bucket("ais", "b"), Access.PUT, False),
    ({"clusters": [{"id": "C1", "perm": "0"}], "buckets": [bucket_acl("b", RW)]},
     Bucket("ais", "b"), Access.PUT, True),
    ({"buckets": [bucket_acl("b", RW)]}, None, Access.PUT, False),
    ({"buckets": [bucket_acl("b", RW)]}, Bucket("ais", "b"), Access.CREATE_BUCKET, False),
    ({"clusters": [{"id": "C1", "perm": 4}]}, Bucket("ais", "x"), Access.PUT, True),  # number
])
def test_grants_follow_ais_rules(claims: dict[str, Any], bucket: Bucket | None, need: Access,
                                 granted: bool) -> None:
    parsed: Claims = parse_claims({"sub": "u", **claims})
    assert parsed.grants("C1", bucket, need) is granted


def test_short_secret_and_bad_keys_say_so_in_one_line(tmp_path: Path) -> None:
    cli = Ais(Node(free_port(), tmp_path / "h", tmp_path / "l"), tmp_path, tmp_path)
    short = tmp_path / "short"
    short.write_text("aBitLongSecretKey\n")  # AuthN's example secret: accepted, with a warning
    r = cli("auth", "token", "create", "--secret", short, "--user", "u", "--admin")
    with pytest.warns(InsecureKeyLengthWarning):
        assert jwt.decode(r.stdout.strip(), b"aBitLongSecretKey", algorithms=["HS256"])["admin"]
    assert r.stderr.startswith("Warning: the secret is 17 bytes") and r.stderr.count("\n") == 1
    not_pem = tmp_path / "not.pem"
    not_pem.write_text("hello")
    r = cli("serve", "--port", free_port(), "--home", tmp_path / "h2", "--auth-public-key",
            not_pem, check=False, timeout=30)
    assert r.returncode == 2 and "not a PEM RSA public key" in r.stderr, r.output
    r = cli("serve", "--port", free_port(), "--home", tmp_path / "h2", "--auth-public-key",
            not_pem, "--auth-secret", short, check=False, timeout=30)
    assert r.returncode == 2 and "not both" in r.stderr, r.output


def test_a_start_body_too_deep_to_parse_is_400_with_a_token_too(auth_node: Node) -> None:
    """The token check reads a start request's bucket; a body that defeats the parser is the
    handler's 400, as on a node without tokens, not a 500."""
    assert ADMIN is not None
    r = session(ADMIN).post(f"{auth_node.endpoint}/v1/download", data=b"[" * 100_000,
                            headers={"Content-Type": "application/json"}, timeout=30)
    assert r.status_code == 400, r.text
    assert auth_node.client().health()
