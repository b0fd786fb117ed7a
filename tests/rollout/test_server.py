"""Policy server: the published openpi-client drives `vlastack serve` (metadata, actions in physical
units, health, malformed and oversized messages, concurrent clients, API keys, the CLI)."""
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import msgpack
import numpy as np
import pytest
import torch
from openpi_client import msgpack_numpy as openpi_msgpack
from openpi_client.websocket_client_policy import WebsocketClientPolicy
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from vlastack.policies.base import load_policy, make_policy
from vlastack.policies.dust import DUSTConfig
from vlastack.rollout import server as srvmod
from vlastack.rollout.policy_adapters import LoadedPolicy
from vlastack.rollout.server import (PolicyRunner, PolicyServer, RequestError, ServeConfig, ServeError, build_server,
                                     check_api_key, is_loopback, packb, unpackb)
from vlastack.types import STATE, TASK, image_key

# openpi-client 0.1.2 calls websockets' connect() without a context manager (websockets >= 15 warns)
pytestmark = pytest.mark.filterwarnings("ignore:connect\\(\\) must be used as a context manager:DeprecationWarning")

KEY = "k3y-" + "0123456789abcdef" * 2


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A tiny random DUST checkpoint (cameras left + wrist 32x32, state 4, actions 3, H = 4)."""
    torch.manual_seed(0)
    cfg = DUSTConfig.preset("tiny")
    stats = {STATE: {"mean": [0.5] * cfg.state_dim, "std": [2.0] * cfg.state_dim},
             "action": {"min": [-3.0, 0.0, 10.0], "max": [3.0, 1.0, 20.0]}}  # physical ranges far from [-1, 1]
    path = tmp_path_factory.mktemp("ckpt") / "dust_tiny"
    make_policy("dust", cfg, stats=stats).save_pretrained(path)
    return str(path)


@pytest.fixture
def serve(checkpoint):
    """Factory: a started server on a free loopback port (stopped after the test)."""
    started = []

    def make(**kw):
        srv = build_server(ServeConfig(checkpoint=checkpoint, port=0, api_key_env=None, **kw)).start()
        started.append(srv)
        return srv

    yield make
    for s in started:
        s.stop()


def _obs(seed=0, size=32, task="open the drawer"):
    rng = np.random.default_rng(seed)
    return {image_key("left"): rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            image_key("wrist"): rng.integers(0, 255, (size, size, 3), dtype=np.uint8),
            STATE: rng.standard_normal(4).astype(np.float32), TASK: task}


def _health(port, key=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/healthz",
                                 headers={"Authorization": f"Api-Key {key}"} if key else {})
    with urllib.request.urlopen(req, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"] == "application/json"
        return json.loads(r.read())


# ---------------------------------------------------------------- protocol and results


def test_openpi_client_gets_metadata_and_physical_actions(serve, checkpoint):
    srv = serve(seed=7)
    client = WebsocketClientPolicy("127.0.0.1", srv.port)
    meta = client.get_server_metadata()
    assert meta["protocol"] == srvmod.PROTOCOL and meta["policy"] == "dust"
    assert meta["cameras"] == ["left", "wrist"] and meta["image_size"] == [32, 32]
    assert (meta["state_dim"], meta["action_dim"], meta["horizon"]) == (4, 3, 4)
    assert meta["observation"][image_key("left")] == {"shape": [32, 32, 3], "dtype": "uint8"}
    obs = _obs(1)
    out = client.infer(obs)
    assert out["actions"].shape == (4, 3) and out["actions"].dtype == np.float32
    timing = out["server_timing"]
    assert timing["infer_ms"] > 0 and timing["server_ms"] >= timing["infer_ms"]
    # the same numbers as the checkpoint run locally with the same seed: physical units, no double (un)normalising
    local = LoadedPolicy(load_policy(checkpoint))
    local.reset(7)
    flat = {k: (v if k == TASK else v[None]) for k, v in obs.items()}
    want = local.sample_actions(flat).actions[0].numpy()  # (H, D_a)
    np.testing.assert_allclose(out["actions"], want, rtol=1e-5, atol=1e-5)
    assert (out["actions"][:, 2] > 5).all()  # the third action lives in [10, 20], not the normalised [-1, 1]
    # a batch: task is a list, every array has a leading B axis
    batch = {k: ([v, "close the door"] if k == TASK else np.stack([v, v])) for k, v in obs.items()}
    assert client.infer(batch)["actions"].shape == (2, 4, 3)


def test_codec_matches_openpi_msgpack_numpy():
    doc = {"a": np.arange(6, dtype=np.int16).reshape(2, 3), "b": np.float32(2.5), "c": np.array([True, False]),
           "d": np.zeros((0, 3), np.float64), "t": "text", "n": [1, 2.0, None]}
    back = unpackb(openpi_msgpack.packb(doc))
    for k in ("a", "c", "d"):
        assert back[k].dtype == doc[k].dtype and back[k].shape == doc[k].shape and (back[k] == doc[k]).all()
        assert back[k].flags.writeable
    assert back["b"] == np.float32(2.5) and back["b"].dtype == np.float32 and back["t"] == "text"
    again = openpi_msgpack.unpackb(packb(back))
    assert (again["a"] == doc["a"]).all() and again["n"] == [1, 2.0, None]
    with pytest.raises(TypeError, match="dtype"):
        packb({"x": np.array(["s"], dtype=object)})
    with pytest.raises(RequestError, match="not allowed"):
        unpackb(msgpack.packb({"x": {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O", b"shape": [1]}}))
    with pytest.raises(RequestError, match="malformed"):
        unpackb(b"\x91" * 5000)  # nesting deeper than msgpack's stack


# ---------------------------------------------------------------- health and latency


def test_health_endpoint_and_latency_figures(serve):
    srv = serve()
    h0 = _health(srv.port)
    assert h0["status"] == "ok" and h0["requests"] == 0 and h0["latency_ms"]["count"] == 0
    client = WebsocketClientPolicy("127.0.0.1", srv.port)
    for i in range(12):
        client.infer(_obs(i))
    h = _health(srv.port)
    assert h["requests"] == 12 and h["errors"] == 0 and h["clients"] == 1 and h["connections"] == 1
    lat = h["latency_ms"]
    assert lat["count"] == 12 and 0 < lat["p50"] <= lat["p99"] <= lat["max"]
    assert h["infer_ms"]["count"] == 12 and h["infer_ms"]["p50"] <= lat["p50"] + 1e-6
    meta = WebsocketClientPolicy("127.0.0.1", srv.port).get_server_metadata()
    assert meta["latency_ms"]["count"] == 12 and meta["latency_ms"]["p99"] == lat["p99"]
    with pytest.raises(urllib.error.HTTPError) as e:  # plain HTTP elsewhere: websockets asks for an upgrade
        urllib.request.urlopen(f"http://127.0.0.1:{srv.port}/", timeout=10)
    assert e.value.code == 426


# ---------------------------------------------------------------- bad input


def _packed(obs, **replace):
    obs = {**obs, **replace}
    return openpi_msgpack.packb({k: v for k, v in obs.items() if v is not None})


def test_malformed_messages_get_error_replies_and_the_connection_survives(serve):
    srv = serve()
    good = _obs(0)
    valid = openpi_msgpack.packb(good)
    bad = {
        "never-used byte": (b"\xc1", "malformed msgpack"),
        "truncated": (valid[:-7], "malformed msgpack"),
        "text frame": ("hello", "text frame"),
        "not a dict": (openpi_msgpack.packb([1, 2, 3]), "expected a dict"),
        "object dtype": (msgpack.packb({**{k: v for k, v in good.items() if k != STATE},
                                        STATE: {b"__ndarray__": True, b"data": b"\0" * 8, b"dtype": "|O",
                                                b"shape": [1]}}, default=openpi_msgpack.pack_array),
                         "not allowed"),
        "bytes vs shape": (msgpack.packb({STATE: {b"__ndarray__": True, b"data": b"\0" * 3, b"dtype": "<f4",
                                                  b"shape": [2**40]}}), "needs"),
        "missing camera": (_packed(good, **{image_key("wrist"): None}), "missing key 'observation.images.wrist'"),
        "image size": (_packed(good, **{image_key("left"): np.zeros((16, 16, 3), np.uint8)}),
                       "observation.images.left: expected shape"),
        "float image": (_packed(good, **{image_key("left"): np.zeros((32, 32, 3), np.float32)}), "uint8"),
        "state dim": (_packed(good, **{STATE: np.zeros(5, np.float32)}), "observation.state: expected shape"),
        "nan state": (_packed(good, **{STATE: np.full(4, np.nan, np.float32)}), "NaN"),
        "no task": (_packed(good, task=None), "'task'"),
        "empty task": (_packed(good, task="  "), "must not be empty"),
        "batch mismatch": (_packed(good, task=["a", "b"]), "a batch of 2"),
    }
    with connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None) as ws:
        openpi_msgpack.unpackb(ws.recv())  # metadata
        for name, (payload, expect) in bad.items():
            ws.send(payload)
            reply = ws.recv(timeout=10)
            assert isinstance(reply, str), name
            assert expect in reply, (name, reply)
        ws.send(valid)
        out = openpi_msgpack.unpackb(ws.recv(timeout=10))
        assert out["actions"].shape == (4, 3)
    # through openpi-client: the error is raised, the same client then infers fine
    client = WebsocketClientPolicy("127.0.0.1", srv.port)
    with pytest.raises(RuntimeError, match="observation.images.left"):
        client.infer(_obs(0, size=48))
    assert client.infer(_obs(0))["actions"].shape == (4, 3)
    h = _health(srv.port)
    assert h["errors"] == len(bad) + 1 and h["requests"] == len(bad) + 3


def test_oversized_message_closes_only_that_connection(serve):
    srv = serve(max_message_mb=0.02)  # 20 KiB: a tiny observation is about 6 KiB
    other = WebsocketClientPolicy("127.0.0.1", srv.port)
    with connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None) as ws:
        ws.recv()
        ws.send(openpi_msgpack.packb({**_obs(0), "junk": np.zeros(200_000, np.uint8)}))
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=10)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1009  # "message too big"
    assert other.infer(_obs(1))["actions"].shape == (4, 3)  # other clients carry on
    assert WebsocketClientPolicy("127.0.0.1", srv.port).infer(_obs(2))["actions"].shape == (4, 3)
    assert _health(srv.port)["errors"] == 1


# ---------------------------------------------------------------- concurrency


def test_concurrent_clients_are_served_and_the_policy_never_runs_concurrently(serve):
    srv = serve()
    loaded = srv.runner.policy
    real = loaded.sample_actions
    active, peak, guard = [0], [0], threading.Lock()

    def tracked(obs, **kw):
        with guard:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.002)  # widen the window in which an overlap would show
            return real(obs, **kw)
        finally:
            with guard:
                active[0] -= 1

    loaded.sample_actions = tracked
    n_clients, n_calls = 6, 5
    results, errors = {}, []
    barrier = threading.Barrier(n_clients)

    def work(i):
        try:
            client = WebsocketClientPolicy("127.0.0.1", srv.port)
            barrier.wait(timeout=20)
            results[i] = [client.infer(_obs(10 * i + j))["actions"] for j in range(n_calls)]
        except Exception as e:  # reported below
            errors.append(repr(e))

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n_clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    assert sorted(results) == list(range(n_clients))
    assert all(a.shape == (4, 3) and np.isfinite(a).all() for r in results.values() for a in r)
    assert peak[0] == 1
    h = _health(srv.port)
    assert h["requests"] == n_clients * n_calls and h["connections"] == n_clients and h["errors"] == 0


def test_client_limit_refuses_extra_connections(serve):
    srv = serve(max_clients=1)
    first = WebsocketClientPolicy("127.0.0.1", srv.port)
    with pytest.raises(InvalidStatus) as e:
        WebsocketClientPolicy("127.0.0.1", srv.port)
    assert e.value.response.status_code == 503
    assert first.infer(_obs(0))["actions"].shape == (4, 3)


# ---------------------------------------------------------------- API keys


def test_api_key_required_when_configured(serve):
    srv = serve(api_key=KEY)
    for key in (None, KEY[:-1] + "x", KEY + "x", "short"):
        with pytest.raises(InvalidStatus) as e:
            WebsocketClientPolicy("127.0.0.1", srv.port, api_key=key)
        assert e.value.response.status_code == 401
    client = WebsocketClientPolicy("127.0.0.1", srv.port, api_key=KEY)
    assert client.infer(_obs(0))["actions"].shape == (4, 3)
    assert _health(srv.port) == {"status": "ok"}  # health needs no key, and without it says nothing else
    assert _health(srv.port, KEY[:-1] + "x") == {"status": "ok"}
    h = _health(srv.port, KEY)
    assert h["requires_api_key"] is True and h["rejected"] == 4 and h["connections"] == 1 and h["policy"] == "dust"


def test_exposed_host_needs_a_key(checkpoint, monkeypatch):
    monkeypatch.delenv(srvmod.API_KEY_ENV, raising=False)
    with pytest.raises(ServeError, match="VLASTACK_API_KEY"):
        build_server(ServeConfig(checkpoint=checkpoint, host="0.0.0.0", warmup=False))
    with pytest.raises(ServeError, match="too short"):
        build_server(ServeConfig(checkpoint=checkpoint, host="0.0.0.0", api_key="abc", warmup=False))
    monkeypatch.setenv(srvmod.API_KEY_ENV, KEY)
    srv = build_server(ServeConfig(checkpoint=checkpoint, host="0.0.0.0", warmup=False))  # built, not started
    assert srv.requires_api_key
    assert [is_loopback(h) for h in ("127.0.0.1", "127.3.4.5", "::1", "localhost", "0.0.0.0", "::", "10.0.0.2",
                                     "robot.lan")] == [True, True, True, True, False, False, False, False]
    assert check_api_key(None, "127.0.0.1") is None
    with pytest.raises(ServeError, match="printable"):
        check_api_key("a key with spaces inside", "127.0.0.1")


# ---------------------------------------------------------------- the command line


def test_cli_errors_are_clean(checkpoint, tmp_path, capsys, monkeypatch):
    monkeypatch.delenv(srvmod.API_KEY_ENV, raising=False)
    assert srvmod.main(["--help"]) == 0
    assert "checkpoint: ???" in capsys.readouterr().out
    assert srvmod.main([]) == 2
    assert "checkpoint: required" in capsys.readouterr().err
    assert srvmod.main([f"checkpoint={tmp_path}"]) == 2
    assert "not a policy checkpoint" in capsys.readouterr().err
    assert srvmod.main([f"checkpoint={checkpoint}", "host=0.0.0.0"]) == 2
    assert "requires an API key" in capsys.readouterr().err
    assert srvmod.main([f"checkpoint={checkpoint}", "bogus=1"]) == 2
    assert "bogus" in capsys.readouterr().err
    assert srvmod.main([f"checkpoint={checkpoint}", "sampling.nonsense=3"]) == 2
    assert "nonsense" in capsys.readouterr().err


def test_cli_serves_until_interrupted(checkpoint, ctrl_c_popen_kwargs):
    env = {**os.environ, "VLASTACK_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "vlastack.cli", "serve", f"checkpoint={checkpoint}", "port=0"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, **ctrl_c_popen_kwargs)
    try:
        line = ""
        deadline = time.time() + 60
        while time.time() < deadline and "serving" not in line:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        m = re.search(r"ws://127\.0\.0\.1:(\d+)", line)
        assert m, (line, proc.stderr.read() if proc.poll() is not None else "")
        assert "api key required" in line
        client = WebsocketClientPolicy("127.0.0.1", int(m.group(1)), api_key=KEY)
        assert client.infer(_obs(0))["actions"].shape == (4, 3)
        proc.send_signal(signal.SIGINT)
        assert proc.wait(120) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_runner_and_server_setting_checks(checkpoint):
    runner = PolicyRunner(LoadedPolicy(load_policy(checkpoint)), seed=None)
    srv = PolicyServer(runner, port=0)  # not started: only the settings checks
    assert srv.port == 0 and not srv.requires_api_key
    with pytest.raises(ServeError, match="max_clients"):
        PolicyServer(runner, max_clients=0)
    with pytest.raises(RequestError, match="list of B strings"):
        runner.infer({**_obs(0), TASK: 3})
