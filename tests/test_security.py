"""Who may call what: processes without an admin token stay on loopback; inference
API keys with one cache namespace per tenant; TLS on the balancer's REST and gRPC
fronts; secrets never reach a log. One real balancer (keys, admin token, TLS) in
front of the session's workers."""

from __future__ import annotations

import http.client
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import orjson
import pytest

from balancer.config import BalancerConfig
from cli.main import main
from common.api_keys import ApiKeys
from common.auth import check_exposure
from protocol.errors import Unauthorized
from protocol.grpc_codec import request_message
from protocol.types import InferRequest, Tensor
from tests.harness import Proc, Server, affinity, free_port, request, wait_until
from tests.reference import infer_body, sample_inputs
from tests.tls_cert import make_certificate
from tests.wire import INFER
from worker.config import WorkerConfig

TOKEN = "admin-token-0f6b1c2d9e8a7f"
KEY_A = "key-a-5d1f0e7c3b2a4968f1e0"
KEY_B = "key-b-9a8b7c6d5e4f3a2b1c0d"


# Exposure: no token, no network address.


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.0.2.10", "example.com", ""])
def test_without_an_admin_token_only_loopback_is_allowed(host: str, zoo: Path) -> None:
    with pytest.raises(ValueError, match="without an admin token"):
        check_exposure(host, None)
    with pytest.raises(ValueError, match="--admin-token"):
        BalancerConfig(workers=("h:1",), host=host)
    with pytest.raises(ValueError, match="--admin-token"):
        WorkerConfig(zoo, host=host)
    check_exposure(host, TOKEN)  # with a token, any address
    BalancerConfig(workers=("h:1",), host=host, admin_token=TOKEN)


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_token(host: str) -> None:
    check_exposure(host, None)


def test_the_cli_refuses_to_start_on_a_public_address_with_a_clear_error(
    capsys: pytest.CaptureFixture[str], zoo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AFFINITY_ADMIN_TOKEN", raising=False)
    for argv in (
        ["balancer", "--workers", "http://127.0.0.1:1", "--host", "0.0.0.0"],
        ["worker", "--models", str(zoo), "--host", "0.0.0.0"],
        ["up", "--host", "0.0.0.0", "--models", str(zoo)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err
        assert "refusing to listen on 0.0.0.0 without an admin token" in err and "--admin-token" in err


# API keys, unit.


def test_api_keys_file_is_checked_and_never_echoes_a_key(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    path.write_bytes(orjson.dumps({KEY_A: "tenant-a", KEY_B: "tenant-b"}))
    keys = ApiKeys.load(path)
    assert keys.tenant(f"Bearer {KEY_A}") == "tenant-a" and keys.tenant(f"bearer {KEY_B}") == "tenant-b"
    assert KEY_A not in repr(keys) and len(keys) == 2
    for header in (None, "", KEY_A, f"Basic {KEY_A}", f"Bearer {KEY_A[:-1]}", f"Bearer {KEY_A}x", "Bearer "):
        with pytest.raises(Unauthorized):
            keys.tenant(header)
    for bad in ({}, [], {"short": "t"}, {KEY_A: "../etc"}, {KEY_A: 5}, {"has space in it 1234": "t"}):
        path.write_bytes(orjson.dumps(bad))
        with pytest.raises(ValueError) as raised:
            ApiKeys.load(path)
        assert KEY_A not in str(raised.value)
    path.write_bytes(b"{nope")
    with pytest.raises(ValueError, match="not JSON"):
        ApiKeys.load(path)


# One balancer with keys, an admin token and TLS.


@dataclass
class Secured:
    server: Server
    port: int
    grpc: str
    cert: Path

    def context(self) -> ssl.SSLContext:
        return ssl.create_default_context(cafile=str(self.cert))

    def https(self, method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None):  # type: ignore[no-untyped-def]
        conn = http.client.HTTPSConnection("127.0.0.1", self.port, context=self.context(), timeout=30)
        try:
            conn.request(method, path, body=body, headers={"Content-Type": "application/json", **(headers or {})})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def channel(self) -> grpc.Channel:
        return grpc.secure_channel(self.grpc, grpc.ssl_channel_credentials(self.cert.read_bytes()))


@pytest.fixture(scope="module")
def secured(workers: list[Server], logdir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Secured]:
    home = tmp_path_factory.mktemp("secured")
    cert, key = make_certificate(home)
    keys = home / "keys.json"
    keys.write_bytes(orjson.dumps({KEY_A: "tenant-a", KEY_B: "tenant-b"}))
    port, grpc_port = free_port(), free_port()
    args = affinity(
        "balancer", "--workers", ",".join(w.url for w in workers), "--port", str(port), "--grpc-port", str(grpc_port),
        "--api-keys", str(keys), "--tls-cert", str(cert), "--tls-key", str(key), "--index-refresh", "2",
        "--log-level", "DEBUG",
    )  # fmt: skip
    proc = Proc(f"secured-{port}", args, logdir / f"secured-{port}.log", env={"AFFINITY_ADMIN_TOKEN": TOKEN}).start()
    secured = Secured(Server(proc, f"https://127.0.0.1:{port}"), port, f"127.0.0.1:{grpc_port}", cert)

    def ready() -> bool:
        if not proc.alive():
            raise RuntimeError(proc.log_tail())
        try:
            return secured.https("GET", "/v2/health/ready")[0] == 200
        except OSError:
            return False

    try:
        wait_until(ready, 60, 0.1)
        yield secured
    finally:
        proc.stop()


def _body(zoo: Path, seed: int) -> bytes:
    return orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, seed)))


def test_inference_needs_a_key_and_each_tenant_has_its_own_cache(secured: Secured, zoo: Path) -> None:
    body = _body(zoo, 91_001)
    path = "/v2/models/mlp-00/infer"
    for headers in ({}, {"Authorization": "Bearer not-a-key-at-all-000"}, {"Authorization": KEY_A}):
        status, got, answer = secured.https("POST", path, body, headers)
        assert status == 401 and got["www-authenticate"] == "Bearer"
        assert "error" in orjson.loads(answer) and KEY_A not in answer.decode()
    for route in ("/v2/models/mlp-00", "/v2/models/mlp-00/ready", "/v2/models/mlp-00/config"):
        assert secured.https("GET", route)[0] == 401
        assert secured.https("GET", route, headers={"Authorization": f"Bearer {KEY_A}"})[0] == 200
    assert secured.https("POST", "/v2/repository/index", b"{}")[0] == 401
    for open_route in ("/v2/health/live", "/v2/health/ready", "/v2", "/metrics"):
        assert secured.https("GET", open_route)[0] == 200

    a = {"Authorization": f"Bearer {KEY_A}"}
    b = {"Authorization": f"Bearer {KEY_B}"}
    states = []
    for headers in (a, a, b, b, a):
        status, got, answer = secured.https("POST", path, body, headers)
        assert status == 200, answer
        states.append(got["x-cache"])
    assert states == ["miss", "hit", "miss", "hit", "hit"], "tenant B never gets tenant A's cached answer"


def test_grpc_takes_the_key_as_metadata_over_tls(secured: Secured, zoo: Path) -> None:
    (name, datatype, array) = sample_inputs(zoo, "mlp-00", 1, 91_002)[0]
    message = request_message(InferRequest([Tensor(name, datatype, array.shape, array)]), "mlp-00")
    with secured.channel() as channel:
        infer = channel.unary_unary(INFER)
        with pytest.raises(grpc.RpcError) as refused:
            infer(message.SerializeToString(), timeout=30)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
        seen = []
        for key in (KEY_A, KEY_A, KEY_B):
            _, call = infer.with_call(
                message.SerializeToString(), timeout=30, metadata=(("authorization", f"Bearer {key}"),)
            )
            seen.append(dict(call.trailing_metadata() or ())["x-cache"])
        assert seen == ["miss", "hit", "miss"]
        live = channel.unary_unary(
            "/inference.GRPCInferenceService/ServerLive",
        )(b"", timeout=10)
        assert live == b"\x08\x01"  # live: true; health needs no key


def test_tls_front_refuses_plain_http(secured: Secured) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", secured.port, timeout=10)
    try:
        with pytest.raises((http.client.HTTPException, OSError)):
            conn.request("GET", "/v2/health/live")
            conn.getresponse().read()
    finally:
        conn.close()
    with grpc.insecure_channel(secured.grpc) as channel, pytest.raises(grpc.RpcError):
        channel.unary_unary("/inference.GRPCInferenceService/ServerLive")(b"", timeout=3)


def test_admin_routes_take_the_token_and_a_key_is_not_one(secured: Secured) -> None:
    for headers in ({}, {"Authorization": f"Bearer {KEY_A}"}, {"Authorization": "Bearer wrong"}):
        assert secured.https("GET", "/admin/cluster", headers=headers)[0] == 401
        assert secured.https("POST", "/v2/repository/models/mlp-00/unload", headers=headers)[0] == 401
    assert secured.https("GET", "/admin/cluster", headers={"Authorization": f"Bearer {TOKEN}"})[0] == 200


def test_secrets_never_reach_a_log(secured: Secured, workers: list[Server], logdir: Path, zoo: Path) -> None:
    """After right and wrong keys and tokens (the balancer logs at DEBUG), no log
    line of the balancer or the workers holds the token or a key."""
    secured.https("POST", "/v2/models/mlp-00/infer", _body(zoo, 91_003), {"Authorization": f"Bearer {KEY_B}"})
    secured.https("POST", "/v2/models/mlp-00/infer", b"{}", {"Authorization": f"Bearer {KEY_A}x"})
    secured.https("GET", "/admin/cluster", headers={"Authorization": f"Bearer {TOKEN}x"})
    secured.https("POST", "/v2/repository/models/mlp-00/load", b"{}", {"Authorization": f"Bearer {TOKEN}"})
    logs = [secured.server.proc.log, *(w.proc.log for w in workers)]
    text = "\n".join(p.read_text(errors="replace") for p in logs)
    assert "balancer on https://" in text, "the balancer's log was read"
    for secret in (TOKEN, KEY_A, KEY_B, KEY_A[:12], TOKEN[:12]):
        assert secret not in text


def test_a_failing_model_says_why_without_paths_or_traces(balancer: Server, workers: list[Server], zoo: Path) -> None:
    """The zoo's "broken" model has a weights file that is not safetensors: a 500 that
    names the failure, never the repository's path, a file handle or a traceback."""
    body = orjson.dumps(infer_body(sample_inputs(zoo, "mlp-00", 1, 3)))
    for target in (balancer, workers[0]):
        resp = request(target.url, "POST", "/v2/models/broken/infer", body)
        assert resp.status == 500, resp.body
        error = resp.json()["error"]
        assert error and str(zoo) not in error and "/" not in error and "Traceback" not in error, error
