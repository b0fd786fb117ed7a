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
    run_dir = tmp_path / "run"  # settings that need the policy to check fail inside the run (Hydra's run dir)
    assert srvmod.main([f"checkpoint={checkpoint}", "sampling.nonsense=3", f"hydra.run.dir={run_dir}"]) == 2
    assert "sampling.nonsense: not an option" in capsys.readouterr().err
    assert (run_dir / ".hydra" / "overrides.yaml").is_file() and (run_dir / ".hydra" / "runs.jsonl").is_file()


def test_cli_serves_until_interrupted(checkpoint, ctrl_c_popen_kwargs, tmp_path):
    env = {**os.environ, "VLASTACK_API_KEY": KEY}
    proc = subprocess.Popen([sys.executable, "-m", "vlastack.cli", "serve", f"checkpoint={checkpoint}", "port=0",
                             f"hydra.run.dir={tmp_path / 'run'}"],
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
    log = (tmp_path / "run" / "serve.log").read_text()  # Hydra's job logging: the server's log file
    assert "[vlastack.serve.ws][INFO] - connection open" in log


def test_runner_and_server_setting_checks(checkpoint):
    runner = PolicyRunner(LoadedPolicy(load_policy(checkpoint)), seed=None)
    srv = PolicyServer(runner, port=0)  # not started: only the settings checks
    assert srv.port == 0 and not srv.requires_api_key
    with pytest.raises(ServeError, match="max_clients"):
        PolicyServer(runner, max_clients=0)
    with pytest.raises(RequestError, match="list of B strings"):
        runner.infer({**_obs(0), TASK: 3})


# ---------------------------------------------------------------- hostile clients (docs/reliability.md)


def _rss_mb():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


class _RssPeak:
    """Samples this process's resident memory every 5 ms while in the block; ``.grew`` is peak - start (MiB)."""

    def __enter__(self):
        self.start = self.peak = _rss_mb()
        self._stop = threading.Event()

        def sample():
            while not self._stop.wait(0.005):
                self.peak = max(self.peak, _rss_mb())

        self._t = threading.Thread(target=sample, daemon=True)
        self._t.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.grew = self.peak - self.start


def _empty_map_bomb(width):
    """width**4 empty msgpack maps nested in arrays of ``width`` (each level within max_array_len)."""
    head = b"\xdc" + width.to_bytes(2, "big")  # array16
    level = head + b"\x80" * width
    for _ in range(3):
        level = head + level * width
    return level


def _timed_infer(port, out, key="ms"):
    t0 = time.perf_counter()
    WebsocketClientPolicy("127.0.0.1", port).infer(_obs(3))
    out[key] = (time.perf_counter() - t0) * 1e3


def test_decoding_runs_off_the_event_loop_under_limits_from_the_policy(serve, monkeypatch):
    """Before the fix a message of 6.25 M empty maps (6.4 MB) decoded on the event loop: every client froze
    for the whole decode and the process grew by hundreds of MB."""
    srv = serve()
    threads = []
    real = srvmod.unpackb

    def spy(*a, **kw):
        threads.append(threading.current_thread().name)
        return real(*a, **kw)

    monkeypatch.setattr(srvmod, "unpackb", spy)
    client = WebsocketClientPolicy("127.0.0.1", srv.port)
    client.infer(_obs(0))
    assert threads and all(n.startswith("vlastack-decode") for n in threads)
    bomb = _empty_map_bomb(50)
    other = {}
    with connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None) as ws, _RssPeak() as mem:
        ws.recv()
        t0 = time.perf_counter()
        ws.send(bomb)
        probe = threading.Thread(target=_timed_infer, args=(srv.port, other))
        probe.start()
        reply = ws.recv(timeout=30)
        bomb_ms = (time.perf_counter() - t0) * 1e3
        probe.join(30)
    print(f"empty-map bomb ({len(bomb) / 2**20:.1f} MiB): error reply in {bomb_ms:.0f} ms, another client served "
          f"in {other.get('ms', float('nan')):.0f} ms meanwhile, memory grew {mem.grew:.0f} MiB")
    assert isinstance(reply, str) and "maps and arrays" in reply
    assert bomb_ms < 500 and other["ms"] < 1000 and mem.grew < 100
    limits = srv.runner.wire_limits()
    assert limits["max_bin_len"] == 2**20 and limits["max_array_len"] == 64 and limits["max_ext_len"] == 0
    for payload, expect in ((msgpack.packb({"task": "x" * (srvmod.MAX_WIRE_STR + 1)}), "max_str_len"),
                            (msgpack.packb({f"k{i}": 0 for i in range(100)}), "max_map_len"),
                            (msgpack.packb({"a": b"\0" * (2**20 + 1)}), "max_bin_len")):
        with pytest.raises(RequestError, match=expect):
            real(payload, limits)


def test_batches_larger_than_max_batch_get_a_clear_error(serve):
    """Before the fix a request of B = 2600 ran through the policy and blocked every other client."""
    srv = serve()
    client = WebsocketClientPolicy("127.0.0.1", srv.port)
    obs = _obs(0)
    huge = {k: ([v] * 2600 if k == TASK else np.stack([v] * 2600)) for k, v in obs.items()}  # 15 MiB
    other = {}
    t0 = time.perf_counter()
    with pytest.raises(RuntimeError, match="max_batch"):
        probe = threading.Thread(target=_timed_infer, args=(srv.port, other))
        probe.start()
        client.infer(huge)
    ms = (time.perf_counter() - t0) * 1e3
    probe.join(30)
    print(f"B=2600 request refused in {ms:.0f} ms; another client served in {other['ms']:.0f} ms meanwhile")
    assert ms < 3000 and other["ms"] < 3000
    assert client.get_server_metadata()["max_batch"] == srv.runner.max_batch == 64  # tiny: 6 KiB per sample
    small = serve(max_batch=2)
    c2 = WebsocketClientPolicy("127.0.0.1", small.port)
    three = {k: ([v] * 3 if k == TASK else np.stack([v] * 3)) for k, v in obs.items()}
    with pytest.raises(RuntimeError, match="a batch of 3 is larger than this server's max_batch=2"):
        c2.infer(three)
    two = {k: ([v] * 2 if k == TASK else np.stack([v] * 2)) for k, v in obs.items()}
    assert c2.infer(two)["actions"].shape == (2, 4, 3)
    with pytest.raises(ServeError, match="max_batch"):
        serve(max_batch=0)


def test_a_slowloris_flood_does_not_starve_a_legitimate_client(serve):
    """400 half-open connections from 9 loopback addresses (300 silent, 100 trickling header bytes), held
    3 s. Before the fix every one kept a server socket until the 10 s handshake timeout: with a file limit
    the process ran out of descriptors and the legitimate client could not even connect."""
    import resource
    import socket

    srv = serve(handshake_timeout_s=1.0)
    baseline = len(os.listdir("/proc/self/fd"))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    flood, stop, opened = [], threading.Event(), threading.Event()

    def run_flood():
        try:
            for i in range(400):
                s = socket.socket()
                s.bind((f"127.0.0.{2 + i % 9}", 0))
                s.connect(("127.0.0.1", srv.port))
                if i % 4 == 0:
                    s.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
                flood.append(s)
        except OSError:
            pass  # out of descriptors: the flood stops there
        opened.set()
        t_end = time.monotonic() + 3.0
        while not stop.is_set() and time.monotonic() < t_end:  # trickle a header byte now and then
            for s in flood[::4]:
                try:
                    s.send(b"X")
                except OSError:
                    pass
            time.sleep(0.3)
        for s in flood:
            s.close()

    resource.setrlimit(resource.RLIMIT_NOFILE, (baseline + 600, hard))
    try:
        t = threading.Thread(target=run_flood)
        t.start()
        opened.wait(30)
        result = {}
        try:
            _timed_infer(srv.port, result)
        finally:
            n_flood = len(flood)
            time.sleep(1.5)  # past the handshake timeout
            h = _health(srv.port)
            stop.set()
            t.join(30)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    print(f"slowloris: {n_flood} half-open connections; the legitimate client connected and got actions in "
          f"{result['ms']:.0f} ms; {h['dropped_handshakes']} pending handshakes dropped")
    assert n_flood == 400 and result["ms"] < 1000
    assert srv.guard.peak <= 64 and h["dropped_handshakes"] > 0 and h["pending_handshakes"] == 0  # timed out
    assert WebsocketClientPolicy("127.0.0.1", srv.port).infer(_obs(1))["actions"].shape == (4, 3)


def test_idle_connections_are_closed(serve):
    srv = serve(idle_timeout_s=0.5)
    with connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None) as ws:
        ws.recv()
        with pytest.raises(ConnectionClosed) as e:
            ws.recv(timeout=5)
    assert e.value.rcvd is not None and e.value.rcvd.code == 1001 and "idle" in e.value.rcvd.reason
    assert _health(srv.port)["idle_closed"] == 1
    with pytest.raises(ServeError, match="idle_timeout_s"):
        serve(idle_timeout_s=-1)


def _fuzz_frames(rng, valid, n):
    """``n`` hostile frames: random msgpack, truncated and bit-flipped requests, wrong types, huge declared
    shapes, bad dtypes, nesting and container bombs, random bytes."""
    import msgpack as mp

    def rand_obj(depth=0):
        k = rng.integers(0, 9 if depth < 4 else 5)
        if k == 0:
            return None
        if k == 1:
            return bool(rng.integers(0, 2))
        if k == 2:
            big = rng.random() < 0.5
            return int(rng.integers(-2**63, 2**63 - 1, dtype=np.int64)) if big else int(rng.integers(0, 300))
        if k == 3:
            return float(rng.standard_normal() * 10.0 ** int(rng.integers(-5, 300)))
        if k == 4:
            return rng.bytes(int(rng.integers(0, 64))).decode("latin-1")
        if k == 5:
            return rng.bytes(int(rng.integers(0, 256)))
        if k == 6:
            return [rand_obj(depth + 1) for _ in range(int(rng.integers(0, 8)))]
        if k == 7:
            return {rng.bytes(4).hex(): rand_obj(depth + 1) for _ in range(int(rng.integers(0, 8)))}
        return {b"__ndarray__": True, b"data": rng.bytes(int(rng.integers(0, 64))),
                b"dtype": str(rng.choice(["<f4", "|u1", "<f8", "|O", "<U3", "V8", "<c8", "xx", ">i2"])),
                b"shape": [int(rng.integers(-3, 2**31)) for _ in range(int(rng.integers(0, 10)))]}

    keys = list(valid)
    frames = []
    for i in range(n):
        kind = i % 8
        if kind == 0:
            frames.append(mp.packb(rand_obj(), use_bin_type=True))
        elif kind == 1:
            packed = openpi_msgpack.packb(valid)
            frames.append(packed[:int(rng.integers(0, len(packed)))])
        elif kind == 2:
            packed = bytearray(openpi_msgpack.packb(valid))
            for _ in range(int(rng.integers(1, 8))):
                packed[int(rng.integers(0, len(packed)))] = int(rng.integers(0, 256))
            frames.append(bytes(packed))
        elif kind == 3:
            obs = dict(valid)
            obs[keys[int(rng.integers(0, len(keys)))]] = rand_obj(1)
            frames.append(openpi_msgpack.packb(obs))
        elif kind == 4:
            obs = {k: v for k, v in valid.items()}
            key = keys[int(rng.integers(0, len(keys) - 1))]  # an array key
            dims = [int(rng.choice([2**40, 2**62, 2**31 - 1, 0, 7])) for _ in range(int(rng.integers(1, 9)))]
            obs[key] = {b"__ndarray__": True, b"data": b"\0" * int(rng.integers(0, 4096)), b"dtype": "|u1",
                        b"shape": dims}
            frames.append(mp.packb(obs, default=openpi_msgpack.pack_array))
        elif kind == 5:
            frames.append(b"\x91" * int(rng.integers(1, 3000)) + b"\xc0")  # deep nesting
        elif kind == 6:
            frames.append(_empty_map_bomb(int(rng.integers(8, 36))))  # from 4 K to 1.5 M maps
        else:
            frames.append(rng.bytes(int(rng.integers(1, 2048))))
    return frames


def test_fuzzed_frames_never_take_the_server_down(serve):
    srv = serve(max_message_mb=1)
    rng = np.random.default_rng(1234)
    frames = _fuzz_frames(rng, _obs(0), 1200)
    replies, served, closes, crashes = 0, 0, 0, []
    t0 = time.perf_counter()
    with _RssPeak() as mem:
        ws = connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None)
        ws.recv()
        for i, frame in enumerate(frames):
            try:
                ws.send(frame)
                reply = ws.recv(timeout=10)
                replies += 1
                if not isinstance(reply, str):  # a flipped pixel byte or a string task: still a valid request
                    served += 1
                    if i % 8 not in (2, 3) or openpi_msgpack.unpackb(reply)["actions"].shape != (4, 3):
                        crashes.append((i, "a binary reply to a hostile frame"))
            except ConnectionClosed as e:  # only "message too big" may close a connection
                closes += 1
                if e.rcvd is None or e.rcvd.code != 1009:
                    crashes.append((i, repr(e)))
                ws = connect(f"ws://127.0.0.1:{srv.port}", compression=None, max_size=None)
                ws.recv()
        ws.close()
    secs = time.perf_counter() - t0
    h = _health(srv.port)
    print(f"fuzz: {len(frames)} frames in {secs:.1f} s, {replies - served} error replies, {served} still-valid "
          f"requests served, {closes} closed for size, "
          f"{len(crashes)} crashes, memory grew {mem.grew:.0f} MiB, server errors counted {h['errors']}")
    assert not crashes, crashes[:5]
    assert replies + closes == len(frames) and h["status"] == "ok" and mem.grew < 150
    assert secs < 20  # before the fix the container bombs decoded on the event loop: 50 s for these frames
    assert srv._thread.is_alive()
    assert WebsocketClientPolicy("127.0.0.1", srv.port).infer(_obs(1))["actions"].shape == (4, 3)
