"""The admin API for keys, orgs and projects (one ingress), its roles, and the CLI verbs
that call the same operations.

Key caches are long here (60 s), so a change seen at once is the invalidation's doing.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import trio

from ingress.keys import KeyStore
from tests.conftest import Gateway, make_config, start_gateway
from tests.test_cli import SWITCHBOARD

HI = [{"role": "user", "content": "hi"}]
LIMITS = {"rpm": 10, "tpm": None, "max_concurrent": 2, "monthly_budget_usd": 5.5}
NO_LIMITS = {"rpm": None, "tpm": None, "max_concurrent": None, "monthly_budget_usd": None}
RECORD_FIELDS = {"id", "org", "project", "role", "name", "limits", "created", "last_used",
                 "revoked"}


def config(redis_url: str, **extra: Any) -> Any:
    return make_config(redis_url, {"local": {"kind": "mock"}},
                       [{"slug": "echo", "routes": [{"provider": "local", "model": "echo"}]}],
                       limits={"key_cache_s": 60.0, "key_miss_cache_s": 0.0},
                       plans={"gold": {"monthly_tokens": 1_000_000}}, **extra)


class Admin:
    """An httpx client of one ingress's admin API with one key (or none)."""

    def __init__(self, http: httpx.AsyncClient, secret: str | None) -> None:
        self.http = http
        self.headers = {"authorization": f"Bearer {secret}"} if secret else {}

    async def __call__(self, method: str, path: str, body: Any = None,
                       **params: str) -> httpx.Response:
        return await self.http.request(method, "/v1/admin" + path, json=body, params=params,
                                       headers=self.headers)


async def chat(gateway: Gateway, secret: str) -> int:
    """The status of one chat completion with `secret`."""
    try:
        await gateway.client(api_key=secret).chat.completions.create(
            model="echo", messages=HI)  # type: ignore[arg-type]
    except openai.APIStatusError as exc:
        return exc.status_code
    return 200


@pytest.fixture
async def gateway(nursery: trio.Nursery, redis_url: str) -> Gateway:
    return await start_gateway(nursery, config(redis_url))


@pytest.fixture
async def http(gateway: Gateway) -> Any:
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as client:
        yield client


@pytest.fixture
async def operator(gateway: Gateway, http: httpx.AsyncClient) -> Admin:
    _, secret = await KeyStore(gateway.redis).create("", role="operator", name="ops")
    return Admin(http, secret)


async def make_admin(operator: Admin, org: str) -> Admin:
    created = await operator("POST", "/keys", {"org": org, "role": "admin", "name": "boss"})
    assert created.status_code == 201, created.text
    return Admin(operator.http, created.json()["secret"])


async def test_key_crud_over_http(gateway: Gateway, operator: Admin) -> None:
    missing_org = await operator("POST", "/keys", {"role": "admin"})
    assert missing_org.status_code == 400 and missing_org.json()["error"]["param"] == "org"
    admin = await make_admin(operator, "acme")
    project = await admin("POST", "/projects", {"name": "web", "limits": {"rpm": 100}})
    assert project.status_code == 201, project.text
    assert project.json()["org"] == "acme" and project.json()["limits"]["rpm"] == 100

    created = await admin("POST", "/keys", {"role": "member", "project": "web", "name": "ci",
                                            "limits": LIMITS})
    assert created.status_code == 201, created.text
    body = created.json()
    assert set(body) == RECORD_FIELDS | {"secret"} and body["secret"].startswith("sb-")
    assert body["org"] == "acme" and body["project"] == "web" and body["role"] == "member"
    assert body["limits"] == LIMITS and body["revoked"] is False and body["last_used"] is None
    key_id, secret = body["id"], body["secret"]
    assert await chat(gateway, secret) == 200

    got = await admin("GET", f"/keys/{key_id}")
    assert got.status_code == 200 and set(got.json()) == RECORD_FIELDS
    assert {k: got.json()[k] for k in ("id", "name", "limits")} == \
        {"id": key_id, "name": "ci", "limits": LIMITS}
    listed = (await admin("GET", "/keys", project="web")).json()["data"]
    assert [r["id"] for r in listed] == [key_id]
    everything = (await admin("GET", "/keys")).json()["data"]
    assert key_id in {r["id"] for r in everything} and len(everything) >= 3  # + test key, admin
    assert all(secret not in str(r) and set(r) == RECORD_FIELDS for r in everything)

    patched = await admin("PATCH", f"/keys/{key_id}", {"limits": {"rpm": 3}, "name": "ci2"})
    assert patched.status_code == 200, patched.text
    assert patched.json()["limits"] == {**NO_LIMITS, "rpm": 3} and patched.json()["name"] == "ci2"
    assert (await admin("GET", f"/keys/{key_id}")).json()["limits"]["rpm"] == 3
    cleared = await admin("PATCH", f"/keys/{key_id}", {"limits": None})
    assert cleared.json()["limits"] == NO_LIMITS and cleared.json()["name"] == "ci2"

    revoked = await admin("DELETE", f"/keys/{key_id}")
    assert revoked.status_code == 200 and revoked.json()["revoked"] is True
    assert await chat(gateway, secret) == 401  # at once, although caches last 60 s
    still = await admin("GET", f"/keys/{key_id}")
    assert still.status_code == 200 and still.json()["revoked"] is True
    rotate_revoked = await admin("POST", f"/keys/{key_id}/rotate")
    assert rotate_revoked.status_code == 409


async def test_rotate_keeps_id_and_settings_and_stops_the_old_secret(
        gateway: Gateway, operator: Admin) -> None:
    created = (await operator("POST", "/keys", {"org": "acme", "role": "member", "name": "r",
                                                "limits": LIMITS})).json()
    old = created["secret"]
    assert await chat(gateway, old) == 200  # cached now (for 60 s)
    rotated = await operator("POST", f"/keys/{created['id']}/rotate")
    assert rotated.status_code == 200, rotated.text
    new = rotated.json()
    assert new["secret"] != old and new["id"] == created["id"]
    assert {k: new[k] for k in RECORD_FIELDS - {"last_used"}} == \
        {k: created[k] for k in RECORD_FIELDS - {"last_used"}}
    assert await chat(gateway, old) == 401
    assert await chat(gateway, new["secret"]) == 200
    assert (await operator("GET", f"/keys/{created['id']}")).json()["revoked"] is False


async def test_limit_change_reaches_a_cached_identity(nursery: trio.Nursery, gateway: Gateway,
                                                     operator: Admin) -> None:
    """A PATCH over HTTP drops the key from every key cache (here: one more, listening
    like an ingress's, that would keep the old identity for 60 s): its next lookup reads
    the new limits."""
    created = (await operator("POST", "/keys", {"org": "acme", "role": "member"})).json()
    other = KeyStore(gateway.redis, cache_s=60)
    await nursery.start(other.serve_invalidations)
    await other.wait_listening()
    assert (await other.authenticate(created["secret"])).limits == ()  # cached now
    patched = await operator("PATCH", f"/keys/{created['id']}", {"limits": {"tpm": 7}})
    assert patched.json()["limits"]["tpm"] == 7
    with trio.fail_after(1):
        while not (identity := await other.authenticate(created["secret"])).limits:
            await trio.sleep(0.005)
    assert [(s.scope, s.limits.tpm) for s in identity.limits] == [("key", 7)]


ADMIN_PATHS = [
    ("POST", "/keys", {"role": "member"}),
    ("GET", "/keys", None),
    ("GET", "/keys/{id}", None),
    ("PATCH", "/keys/{id}", {"name": "x"}),
    ("DELETE", "/keys/{id}", None),
    ("POST", "/keys/{id}/rotate", None),
    ("GET", "/orgs/{org}", None),
    ("PUT", "/orgs/{org}", {"limits": {"rpm": 1}}),
    ("GET", "/projects", None),
    ("POST", "/projects", {"name": "p2"}),
]


async def test_roles_matrix(gateway: Gateway, operator: Admin) -> None:
    admin_a = await make_admin(operator, "a")
    await make_admin(operator, "b")
    b_key = (await operator("POST", "/keys", {"org": "b", "role": "member"})).json()
    a_key = (await operator("POST", "/keys", {"org": "a", "role": "member"})).json()
    member = Admin(operator.http, gateway.secret)  # a member of acme
    nobody = Admin(operator.http, None)
    for method, path, body in ADMIN_PATHS:
        own = path.format(id=a_key["id"], org="a")
        for caller, status in ((member, 403), (nobody, 401)):
            answer = await caller(method, own, body)
            assert answer.status_code == status, (method, own, answer.text)
            assert answer.json()["error"]["code"] == ("forbidden" if status == 403
                                                      else "unauthorized")
        # Admin of org a, on org b's things: named org -> 403, an id of b's -> 404, as a
        # made-up one.
        for guess in (b_key["id"], "key_0000000000000000", gateway.key_id):
            theirs = path.format(id=guess, org="b")
            answer = await admin_a(method, theirs, {**body, "org": "b"} if
                                   method == "POST" and "id" not in path else body,
                                   **({"org": "b"} if method == "GET" and "{" not in path
                                      else {}))
            expected = 404 if "{id}" in path else 403
            assert answer.status_code == expected, (method, theirs, answer.text)
    # Nothing of b changed; a's admin still manages a.
    assert (await operator("GET", f"/keys/{b_key['id']}")).json()["revoked"] is False
    assert (await operator("GET", f"/keys/{b_key['id']}")).json()["name"] == ""
    assert (await operator("GET", "/projects", org="b")).json()["data"] == []
    assert (await admin_a("GET", "/keys")).json()["data"][0]["org"] == "a"
    assert {r["org"] for r in (await admin_a("GET", "/keys")).json()["data"]} == {"a"}
    assert (await admin_a("GET", "/orgs/a")).status_code == 200
    # An admin sets its org's limits and budget; the plan is the operator's to set.
    own = await admin_a("PUT", "/orgs/a", {"limits": {"monthly_budget_usd": 5}})
    assert own.status_code == 200 and own.json()["limits"]["monthly_budget_usd"] == 5
    assert (await admin_a("PUT", "/orgs/a", {"plan": "gold"})).status_code == 403
    assert (await operator("GET", "/orgs/a")).json()["plan"] == ""
    # The operator may do everything, naming the org.
    assert (await operator("GET", "/keys", org="b")).json()["data"][0]["org"] == "b"
    assert (await operator("GET", "/projects")).status_code == 400
    put = await operator("PUT", "/orgs/b", {"plan": "gold", "limits": {"tpm": 5}})
    assert put.status_code == 200 and put.json() == {
        "org": "b", "plan": "gold", "limits": {**NO_LIMITS, "tpm": 5}}
    assert (await operator("GET", "/orgs/b")).json()["plan"] == "gold"


async def test_operator_keys_serve_no_inference(gateway: Gateway, operator: Admin,
                                                http: httpx.AsyncClient) -> None:
    answer = await http.post("/v1/chat/completions", headers=operator.headers,
                             json={"model": "echo", "messages": HI})
    assert answer.status_code == 403
    assert answer.json()["error"]["code"] == "forbidden" and "operator" in \
        answer.json()["error"]["message"]
    assert (await http.get("/v1/models", headers=operator.headers)).status_code == 200
    # Operator keys are made by the CLI only.
    over_http = await operator("POST", "/keys", {"org": "acme", "role": "operator"})
    assert over_http.status_code == 422 and over_http.json()["error"]["param"] == "role"


async def test_bad_input_is_refused_naming_the_field(gateway: Gateway, operator: Admin) -> None:
    cases = [
        ("POST", "/keys", {"org": "a:b", "role": "member"}, 422, "org"),
        ("POST", "/keys", {"org": "acme"}, 422, None),  # role is required
        ("POST", "/keys", {"org": "acme", "role": "member", "project": "nope"}, 404, "project"),
        ("POST", "/keys", {"org": "acme", "role": "member", "extra": 1}, 422, None),
        ("POST", "/keys", {"org": "acme", "role": "member", "limits": {"rpm": -1}}, 422,
         "limits.rpm"),
        ("PUT", "/orgs/acme", {"plan": "platinum"}, 422, "plan"),
        ("PUT", "/orgs/a:b", {"plan": "gold"}, 422, "org"),
        ("POST", "/projects", {"org": "acme", "name": "bad name"}, 422, "name"),
        ("GET", "/keys/key_nope", None, 404, "id"),
    ]
    for method, path, body, status, param in cases:
        answer = await operator(method, path, body)
        assert answer.status_code == status, (path, body, answer.text)
        if param is not None:
            assert answer.json()["error"]["param"] == param, answer.text
    listed = await operator("GET", "/keys", org="x:y")
    assert listed.status_code == 422 and listed.json()["error"]["param"] == "org"
    again = await operator("POST", "/projects", {"org": "acme", "name": "twice"})
    assert again.status_code == 201
    assert (await operator("POST", "/projects", {"org": "acme", "name": "twice"})).status_code == 409
    assert (await operator("GET", "/orgs/acme")).json() == {"org": "acme", "plan": "",
                                                            "limits": NO_LIMITS}


async def test_last_used_is_recorded(gateway: Gateway, operator: Admin) -> None:
    created = (await operator("POST", "/keys", {"org": "acme", "role": "member"})).json()
    assert await chat(gateway, created["secret"]) == 200
    with trio.fail_after(10):  # flushed every few seconds, never on the request's path
        while (await operator("GET", f"/keys/{created['id']}")).json()["last_used"] is None:
            await trio.sleep(0.2)
    assert (await operator("GET", f"/keys/{created['id']}")).json()["last_used"] >= \
        created["created"]


async def test_metrics_for_operator_keys_only(nursery: trio.Nursery, redis_url: str) -> None:
    gateway = await start_gateway(nursery, config(redis_url, metrics={"ingress": "operator"}),
                                  workers=False)
    _, operator = await KeyStore(gateway.redis).create("", role="operator")
    async with httpx.AsyncClient(base_url=gateway.base_url, trust_env=False) as http:
        assert (await http.get("/metrics")).status_code == 401
        member = await http.get("/metrics", headers={"authorization": f"Bearer {gateway.secret}"})
        assert member.status_code == 403 and member.json()["error"]["code"] == "forbidden"
        ok = await http.get("/metrics", headers={"authorization": f"Bearer {operator}"})
        assert ok.status_code == 200 and "switchboard_requests_in_flight" in ok.text


async def test_openapi_describes_the_admin_api(gateway: Gateway, http: httpx.AsyncClient) -> None:
    document = (await http.get("/openapi.json")).json()
    paths = document["paths"]
    expected = {"/v1/admin/keys": {"get", "post"},
                "/v1/admin/keys/{id}": {"get", "patch", "delete"},
                "/v1/admin/keys/{id}/rotate": {"post"},
                "/v1/admin/orgs/{org}": {"get", "put"},
                "/v1/admin/projects": {"get", "post"}}
    for path, methods in expected.items():
        assert set(paths[path]) >= methods, path
    schemas = document["components"]["schemas"]
    assert {"KeyCreate", "KeyCreated", "KeyPatch", "KeyView", "KeyList", "OrgUpdate", "OrgView",
            "ProjectCreate", "ProjectList", "LimitSet"} <= set(schemas)
    assert "secret" in schemas["KeyCreated"]["properties"]
    assert "secret" not in schemas["KeyView"]["properties"]
    create = paths["/v1/admin/keys"]["post"]
    assert create["responses"]["201"]["content"]["application/json"]["schema"]["$ref"].endswith(
        "KeyCreated")


def cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([SWITCHBOARD, "keys", *args], env=env, capture_output=True, text=True,
                          timeout=60)


def test_cli_key_verbs(tmp_path: Path, redis_url: str) -> None:
    path = tmp_path / "sb.toml"
    path.write_text('redis_url = "redis://127.0.0.1:1/0"\n[plans.gold]\nmonthly_tokens = 10\n')
    env = {**os.environ, "REDIS_URL": redis_url}
    conf = ("--config", str(path))
    operator = cli("create", *conf, "--operator", "--name", "ops", env=env)
    assert operator.returncode == 0, operator.stderr
    assert operator.stdout.splitlines()[-1].startswith("sb-")
    admin = cli("create", *conf, "--org", "acme", "--role", "admin", "--project", "web",
                "--plan", "gold", "--rpm", "5", env=env)
    assert admin.returncode == 0, admin.stderr
    admin_secret = admin.stdout.splitlines()[-1]
    bad = cli("create", *conf, "--org", "a:b", env=env)
    assert bad.returncode == 2 and "org" in bad.stderr
    both = cli("create", *conf, "--org", "acme", "--operator", env=env)
    assert both.returncode == 2 and "operator" in both.stderr

    listed = cli("list", *conf, env=env)
    rows = [line.split() for line in listed.stdout.splitlines()[1:]]
    assert {(r[1], r[3]) for r in rows} == {("-", "operator"), ("acme", "admin")}, listed.stdout
    assert admin_secret not in listed.stdout
    key_id = next(r[0] for r in rows if r[1] == "acme")

    limited = cli("limits", *conf, key_id, "--tpm", "100", env=env)
    assert limited.returncode == 0, limited.stderr
    assert "rpm=5" in limited.stdout and "tpm=100" in limited.stdout
    rotated = cli("rotate", *conf, key_id, env=env)
    assert rotated.returncode == 0, rotated.stderr
    new_secret = rotated.stdout.splitlines()[-1]
    assert new_secret.startswith("sb-") and new_secret != admin_secret
    assert cli("revoke", *conf, key_id, env=env).returncode == 0
    assert cli("revoke", *conf, "key_nope", env=env).returncode == 1
    after = cli("list", *conf, "--org", "acme", env=env).stdout
    assert "revoked" in after and key_id in after
