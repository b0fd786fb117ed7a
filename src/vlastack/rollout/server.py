"""Policy server: a trained policy behind openpi's websocket + msgpack-numpy protocol.

``vlastack serve checkpoint=PATH`` (Hydra overrides over ``configs/serve.yaml``) or, from
Python, ``PolicyServer(PolicyRunner(LoadedPolicy(...)), port=0).start()``. The published
``openpi-client`` package drives it unchanged::

    from openpi_client.websocket_client_policy import WebsocketClientPolicy
    client = WebsocketClientPolicy("127.0.0.1", 8000)          # api_key="..." when required
    client.get_server_metadata()                                # what the policy reads
    client.infer({"observation.images.left": img, "observation.state": s, "task": "open the drawer"})
    # -> {"actions": float32 (H, D_a) in physical units, "server_timing": {...}}

Protocol (openpi-client 0.1.2):
- The client opens a websocket (no compression), optionally with the header
  ``Authorization: Api-Key <key>``, and first receives the server metadata: one msgpack message.
- Each request is one binary msgpack message holding a dict of observations in the data
  contract's keys (numpy arrays packed as ``{"__ndarray__": True, "data", "dtype", "shape"}``);
  the reply is a binary msgpack dict with ``actions``. A text frame in reply is an error: the
  client raises it, the connection stays open, the next request is served.
- Observations are one sample (``task`` a string; images (H, W, 3) or (n_obs, H, W, 3) uint8;
  state (D_s,) or (n_obs, D_s)) or a batch (``task`` a list of B strings, a leading B axis on every
  array; actions (B, H, D_a)). Keys besides the policy's cameras, state and task are ignored.
- Clients written against openpi's examples may send ``prompt`` for ``task`` and their own image
  and state keys, renamed by ``key_map`` (e.g. ``{"observation/image": "observation.images.left"}``;
  see :mod:`vlastack.rollout.openpi_keys`).

Safety of the network side:
- Binds ``127.0.0.1`` by default. Any other host requires an API key (``api_key`` or the
  ``VLASTACK_API_KEY`` environment variable); a configured key is always enforced, compared in
  constant time (:func:`hmac.compare_digest`) with the ``Authorization`` header during the
  opening handshake; a missing or wrong key gets HTTP 401 and no websocket.
- Arrays decode only with bool / integer / float dtypes whose byte count matches their shape
  (never object arrays: no pickle, no pointers from the wire). Messages larger than
  ``max_message_mb`` close that connection with code 1009 ("message too big"); malformed messages
  get a text error reply. Either way the server and its other clients carry on.
- Decoding runs in worker threads, never on the event loop, under msgpack limits derived from
  the policy's inputs (:meth:`PolicyRunner.wire_limits`: the largest binary is the largest array
  the policy reads at ``max_batch``; arrays, maps and strings are short; at most
  ``MAX_CONTAINERS`` maps and arrays per message), so a message of millions of empty maps is
  refused after a few thousand. A batch larger than ``max_batch`` (default: from the policy's
  inputs, :func:`default_max_batch`) is refused with an error naming the limit.
- Before the handshake: at most ``max_pending_handshakes`` connections may be opening at once,
  and ``max_pending_per_address`` from one address; past either cap the oldest pending one is
  dropped (a legitimate client completes its handshake in milliseconds, a slowloris never does).
  A handshake must finish within ``handshake_timeout_s``; an open connection that sends nothing
  for ``idle_timeout_s`` is closed.
- Inference runs in one worker thread, so the policy never runs concurrently however many
  clients are connected; ``GET /healthz`` on the same port answers JSON with request counts and
  the server-side latency p50 / p99 (also in the metadata sent on connect). When an API key is
  configured, a request without it gets only ``{"status": "ok"}``.
"""

from __future__ import annotations

import asyncio
import hmac
import http
import ipaddress
import json
import logging
import os
import sys
import threading
import time
import traceback
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np

from vlastack import hydra_app
from vlastack.rollout.openpi_keys import KeyMap, KeyMapError, KeyMapRequestError
from vlastack.rollout.policy_adapters import (LoadedPolicy, PolicyAdapterError, PolicyInputs, load_policy_for,
                                               resolve_checkpoint)
from vlastack.types import IMAGE_PREFIX, STATE, TASK, ContractError, DatasetSpec, fake_observation, image_key

PROTOCOL = "openpi-websocket-msgpack-numpy"
HEALTH_PATH = "/healthz"
API_KEY_ENV = "VLASTACK_API_KEY"
MIN_API_KEY_LEN = 16
#: dtype kinds that may arrive over the wire: bool, signed / unsigned integers, floats
WIRE_DTYPE_KINDS = "biuf"
MAX_WIRE_NDIM = 8
#: msgpack maps + arrays one message may hold (a request holds a few dozen)
MAX_CONTAINERS = 1024
#: longest string on the wire (instructions, keys, dtypes)
MAX_WIRE_STR = 4096
#: the batch budget behind :func:`default_max_batch` (bytes of observations per request)
DEFAULT_BATCH_BYTES = 8 * 2**20

log = logging.getLogger("vlastack.serve")


class ServeError(ValueError):
    """Server settings that cannot work (bad host/key combination, missing checkpoint, ...)."""


class RequestError(ValueError):
    """A request the server cannot serve (malformed msgpack, bad arrays, wrong keys or shapes);
    its message goes back to the client as a text frame."""


# ------------------------------------------------------------------------------------ codec


def _pack_default(obj: Any) -> Any:
    """msgpack ``default`` hook: numpy arrays and scalars in openpi's layout."""
    if isinstance(obj, (np.ndarray, np.generic)) and obj.dtype.kind not in WIRE_DTYPE_KINDS:
        raise TypeError(f"cannot send dtype {obj.dtype} (only bool, integer and float arrays)")
    if isinstance(obj, np.ndarray):
        obj = np.ascontiguousarray(obj)
        return {b"__ndarray__": True, b"data": obj.tobytes(), b"dtype": obj.dtype.str, b"shape": list(obj.shape)}
    if isinstance(obj, np.generic):
        return {b"__npgeneric__": True, b"data": obj.item(), b"dtype": obj.dtype.str}
    raise TypeError(f"cannot send {type(obj).__name__}")


def packb(obj: Any) -> bytes:
    """``obj`` (dicts, lists, strings, numbers, numpy arrays) as one msgpack message, openpi's layout."""
    import msgpack

    return msgpack.packb(obj, default=_pack_default, use_bin_type=True)


def _wire_dtype(raw: Any) -> np.dtype:
    """The numpy dtype named by a wire ``dtype`` field, if it is a plain bool / int / float type."""
    if isinstance(raw, bytes):
        raw = raw.decode("ascii", "replace")
    if not isinstance(raw, str) or len(raw) > 16:
        raise RequestError(f"array dtype must be a short string such as '<f4', got {raw!r:.40}")
    try:
        dt = np.dtype(raw)
    except (TypeError, ValueError) as e:
        raise RequestError(f"array dtype {raw!r} is not a numpy dtype") from e
    if dt.kind not in WIRE_DTYPE_KINDS or dt.fields is not None or dt.subdtype is not None:
        raise RequestError(f"array dtype {raw!r} ({dt}) is not allowed; send bool, integer or float arrays")
    return dt


def _decode_hook(obj: dict) -> Any:
    """msgpack ``object_hook``: openpi-packed arrays back to numpy, checked (never object dtype)."""
    if b"__ndarray__" in obj or "__ndarray__" in obj:
        get = (lambda k: obj.get(k.encode(), obj.get(k)))
        data, shape = get("data"), get("shape")
        dt = _wire_dtype(get("dtype"))
        if not isinstance(data, (bytes, bytearray)):
            raise RequestError(f"array data must be bytes, got {type(data).__name__}")
        if not isinstance(shape, (list, tuple)) or len(shape) > MAX_WIRE_NDIM or \
                not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
            raise RequestError(f"array shape must be a list of at most {MAX_WIRE_NDIM} non-negative ints, "
                               f"got {shape!r:.80}")
        n = 1
        for s in shape:
            n *= s
        if n * dt.itemsize != len(data):
            raise RequestError(f"array of shape {tuple(shape)} and dtype {dt} needs {n * dt.itemsize} bytes, "
                               f"got {len(data)}")
        return np.frombuffer(data, dtype=dt).reshape(shape).copy()  # writable, owns its memory
    if b"__npgeneric__" in obj or "__npgeneric__" in obj:
        get = (lambda k: obj.get(k.encode(), obj.get(k)))
        dt, value = _wire_dtype(get("dtype")), get("data")
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if not (isinstance(value, bool) if dt.kind == "b" else number):
            raise RequestError(f"numpy scalar of dtype {dt}: data must be a {'bool' if dt.kind == 'b' else 'number'}, "
                               f"got {type(value).__name__}")
        try:
            return dt.type(value)
        except (OverflowError, ValueError) as e:
            raise RequestError(f"numpy scalar {value!r} does not fit dtype {dt}") from e
    return obj


class _Budget:
    """Counts the maps and arrays msgpack builds for one message; raises past ``limit``."""

    def __init__(self, limit: int):
        self.limit, self.n = limit, 0

    def _spend(self) -> None:
        self.n += 1
        if self.n > self.limit:
            raise RequestError(f"message holds more than {self.limit} maps and arrays; a request holds a few dozen")

    def object_hook(self, obj: dict) -> Any:
        """Count a map, then decode it."""
        self._spend()
        return _decode_hook(obj)

    def list_hook(self, obj: list) -> list:
        """Count an array."""
        self._spend()
        return obj


def unpackb(data: bytes, limits: Mapping[str, int] | None = None) -> Any:
    """Decode one msgpack message (numpy arrays checked); raises :class:`RequestError` when malformed.

    ``limits``: msgpack's ``max_str_len``, ``max_bin_len``, ``max_array_len``, ``max_map_len``,
    ``max_ext_len`` and our ``max_containers`` (maps + arrays); see :meth:`PolicyRunner.wire_limits`.
    """
    import msgpack

    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise RequestError(f"expected a binary msgpack message, got {type(data).__name__}")
    lim = dict(limits or {})
    budget = _Budget(int(lim.pop("max_containers", 2**62)))
    hint = lim.pop("hint", "")
    try:
        return msgpack.unpackb(data, object_hook=budget.object_hook, list_hook=budget.list_hook, raw=False,
                               strict_map_key=True, **lim)
    except RequestError:
        raise
    except ValueError as e:  # msgpack's limits: "... exceeds max_bin_len(...)"
        if "exceeds max_" in str(e):
            raise RequestError(f"message exceeds the server's limits ({e}){hint}") from e
        raise RequestError(f"malformed msgpack message ({type(e).__name__}: {e})") from e
    except Exception as e:  # msgpack's ExtraData / FormatError / StackError, bad UTF-8, odd map keys
        raise RequestError(f"malformed msgpack message ({type(e).__name__}: {e})") from e


# ------------------------------------------------------------------------------------ latency


class LatencyStats:
    """Milliseconds of the last ``window`` requests; thread-safe; p50 / p99 on demand."""

    def __init__(self, window: int = 1000):
        """Keep the newest ``window`` samples."""
        if window < 1:
            raise ServeError(f"latency_window: must be >= 1, got {window}")
        self.window = int(window)
        self._ms: deque[float] = deque(maxlen=self.window)
        self._lock = threading.Lock()

    def add(self, ms: float) -> None:
        """Record one request's milliseconds."""
        with self._lock:
            self._ms.append(float(ms))

    def summary(self) -> dict[str, Any]:
        """``{"count", "p50", "p99", "mean", "max"}`` in ms over the window (None when empty)."""
        with self._lock:
            ms = np.fromiter(self._ms, float, len(self._ms))
        if not len(ms):
            return {"count": 0, "p50": None, "p99": None, "mean": None, "max": None}
        p50, p99 = np.percentile(ms, [50, 99])
        return {"count": int(len(ms)), "p50": round(float(p50), 3), "p99": round(float(p99), 3),
                "mean": round(float(ms.mean()), 3), "max": round(float(ms.max()), 3)}


# ------------------------------------------------------------------------------------ policy side


def _as_numpy(x: Any) -> np.ndarray:
    """Tensor or array -> numpy (on the CPU)."""
    if hasattr(x, "detach"):
        x = x.detach().float().cpu().numpy() if str(getattr(x, "dtype", "")) == "torch.bfloat16" \
            else x.detach().cpu().numpy()
    return np.asarray(x)


def sample_bytes(inputs: PolicyInputs) -> int:
    """Bytes of one observation sample the policy reads (uint8 images, float64 state at most)."""
    h, w = inputs.image_size
    return inputs.n_obs * (len(inputs.cameras) * h * w * 3 + inputs.state_dim * 8)


def default_max_batch(config: Any, inputs: PolicyInputs) -> int:
    """The largest batch a request may hold: the config's ``max_batch`` when it has one, else as many
    samples as fit in :data:`DEFAULT_BATCH_BYTES`, between 1 and 64."""
    own = getattr(config, "max_batch", None)
    if isinstance(own, int) and not isinstance(own, bool) and own >= 1:
        return own
    return int(min(64, max(1, DEFAULT_BATCH_BYTES // max(1, sample_bytes(inputs)))))


class PolicyRunner:
    """Checks wire observations against the policy's inputs and runs it, one request at a time.

    ``infer(obs)`` takes a decoded dict (see the module doc for the accepted shapes) and returns
    ``{"actions": float32 (H, D_a) or (B, H, D_a)}`` in physical units. A lock serializes calls,
    so the policy never runs concurrently even when called from several threads. Batches hold at
    most ``max_batch`` samples (None: :func:`default_max_batch`).
    """

    def __init__(self, policy: LoadedPolicy, seed: int | None = 0, latency_window: int = 1000,
                 checkpoint: str | None = None, max_batch: int | None = None,
                 key_map: Mapping[str, str] | None = None):
        """Serve ``policy``; ``seed`` seeds the sampling noise once (after :meth:`warmup`); ``key_map``
        renames client keys to ours (client key -> our key, see :class:`KeyMap`)."""
        if not isinstance(policy, LoadedPolicy):
            raise TypeError(f"PolicyRunner serves a LoadedPolicy, got {type(policy).__name__}")
        self.policy = policy
        self.inputs: PolicyInputs = policy.inputs()
        if max_batch is None:
            max_batch = default_max_batch(policy.config, self.inputs)
        if isinstance(max_batch, bool) or not isinstance(max_batch, int) or max_batch < 1:
            raise ServeError(f"max_batch: expected a positive int (or null for the policy's default), "
                             f"got {max_batch!r}")
        self.max_batch = max_batch
        self.seed = seed
        self.checkpoint = checkpoint
        self.infer_ms = LatencyStats(latency_window)
        self.warmup_ms: float | None = None
        self._lock = threading.Lock()
        try:
            self.key_map = KeyMap(key_map)
            self.key_map.check_targets(self.expected_keys())
        except KeyMapError as e:
            raise ServeError(str(e)) from e
        policy.reset(seed)

    # ---------------------------------------------------------------- description

    def expected_keys(self) -> dict[str, dict[str, Any]]:
        """Per key the shape (one sample, without history) and dtype the policy reads."""
        inp = self.inputs
        keys = {image_key(c): {"shape": [*inp.image_size, 3], "dtype": "uint8"} for c in inp.cameras}
        if inp.state_dim:
            keys[STATE] = {"shape": [inp.state_dim], "dtype": "float32"}
        keys[TASK] = {"shape": [], "dtype": "str"}
        return keys

    def metadata(self) -> dict[str, Any]:
        """What a client needs to build observations and read actions."""
        inp = self.inputs
        return {"protocol": PROTOCOL, "policy": getattr(self.policy.policy, "name", type(self.policy.policy).__name__),
                "checkpoint": os.path.basename(self.checkpoint or "") or None, "observation": self.expected_keys(),
                "cameras": list(inp.cameras), "image_size": list(inp.image_size), "state_dim": inp.state_dim,
                "action_dim": inp.action_dim, "horizon": inp.horizon, "n_obs_steps": inp.n_obs,
                "actions": "float32 (H, D_a), physical units; (B, H, D_a) when task is a list",
                "sampling": {k: v for k, v in self.policy.sampling.items()}, "seed": self.seed,
                "max_batch": self.max_batch, "key_map": self.key_map.to_dict()}

    def wire_limits(self) -> dict[str, Any]:
        """msgpack limits for one request, from the policy's inputs (see :func:`unpackb`).

        Binaries: the largest array the policy reads at ``max_batch`` (at least 1 MiB, so a client
        may send a camera the policy ignores); arrays: the task list of ``max_batch`` (at least 64);
        maps: the keys a request holds plus room for extras; strings: :data:`MAX_WIRE_STR`."""
        inp = self.inputs
        h, w = inp.image_size
        largest = self.max_batch * inp.n_obs * max(h * w * 3, inp.state_dim * 8)
        return {"max_bin_len": max(largest, 2**20), "max_array_len": max(self.max_batch, 64),
                "max_map_len": len(self.expected_keys()) + 32, "max_str_len": MAX_WIRE_STR, "max_ext_len": 0,
                "max_containers": MAX_CONTAINERS,
                "hint": f"; this server takes batches of at most {self.max_batch} (max_batch) of "
                        f"{list(self.expected_keys())}"}

    # ---------------------------------------------------------------- checks

    def _array(self, obs: Mapping[str, Any], key: str, kind: str) -> np.ndarray:
        """``obs[key]`` as an array, checked to be numeric (``kind`` 'image' needs uint8)."""
        if key not in obs:
            raise RequestError(f"missing key {key!r}; the policy reads {sorted(self.expected_keys())} "
                               f"(got {sorted(obs)[:16]})")
        v = obs[key]
        if not isinstance(v, np.ndarray):
            if kind == "image" or isinstance(v, (str, bytes, dict)):
                raise RequestError(f"{key}: expected a numpy array, got {type(v).__name__}")
            try:
                with np.errstate(over="ignore"):  # too large for float32: inf, refused by the finite check
                    v = np.asarray(v, np.float32)
            except (TypeError, ValueError, OverflowError) as e:
                raise RequestError(f"{key}: expected a numeric array, got {type(v).__name__}") from e
        if kind == "image" and v.dtype != np.uint8:
            h, w = self.inputs.image_size
            raise RequestError(f"{key}: expected uint8 images ({h}, {w}, 3), got dtype {v.dtype}")
        return v

    def _shape_ok(self, key: str, v: np.ndarray, per_frame: tuple[int, ...], batch: int | None) -> np.ndarray:
        """``v`` with a batch axis: (B, [n_obs,] *per_frame); raises naming the accepted shapes."""
        n = self.inputs.n_obs
        lead_b = () if batch is None else (batch,)
        accepted = [(*lead_b, n, *per_frame)] + ([(*lead_b, *per_frame)] if n == 1 else [])
        if tuple(v.shape) not in accepted:
            what = "one sample" if batch is None else f"a batch of {batch} (len(task))"
            raise RequestError(f"{key}: expected shape {' or '.join(str(a) for a in accepted[::-1])} for {what} "
                               f"(policy cameras {list(self.inputs.cameras)}, image_size "
                               f"{list(self.inputs.image_size)}, state_dim {self.inputs.state_dim}, n_obs_steps {n}), "
                               f"got {tuple(v.shape)}")
        return v if batch is not None else v[None]

    def prepare(self, obs: Any) -> tuple[dict[str, Any], bool]:
        """(flat batched policy input, whether the request was one sample); raises :class:`RequestError`."""
        if not isinstance(obs, Mapping):
            raise RequestError(f"expected a dict of observations, got {type(obs).__name__}")
        task = obs.get(TASK)
        if isinstance(task, str):
            batch, tasks = None, [task]
        elif isinstance(task, (list, tuple)) and task and all(isinstance(t, str) for t in task):
            batch, tasks = len(task), list(task)
            if batch > self.max_batch:
                raise RequestError(f"{TASK!r}: a batch of {batch} is larger than this server's max_batch="
                                   f"{self.max_batch}; send at most {self.max_batch} samples per request")
        else:
            raise RequestError(f"{TASK!r}: expected the instruction (a string) or a list of B strings, "
                               f"got {type(task).__name__ if task is not None else 'nothing'}")
        if any(not t.strip() for t in tasks):
            raise RequestError(f"{TASK!r}: instructions must not be empty")
        inp = self.inputs
        flat: dict[str, Any] = {TASK: tasks}
        for cam in inp.cameras:
            k = image_key(cam)
            flat[k] = self._shape_ok(k, self._array(obs, k, "image"), (*inp.image_size, 3), batch)
        if inp.state_dim or STATE in obs:
            s = self._array(obs, STATE, "state")
            if s.dtype.kind not in "iuf":
                raise RequestError(f"{STATE}: expected a float array, got dtype {s.dtype}")
            with np.errstate(over="ignore"):  # too large for float32: inf, refused below
                s = self._shape_ok(STATE, s.astype(np.float32, copy=False), (inp.state_dim,), batch)
            if not np.isfinite(s).all():
                raise RequestError(f"{STATE}: contains NaN or infinite values")
            flat[STATE] = s
        else:
            flat[STATE] = np.zeros((len(tasks), inp.n_obs, 0), np.float32)  # (B, n_obs, 0)
        return flat, batch is None

    # ---------------------------------------------------------------- inference

    def infer(self, obs: Any) -> dict[str, Any]:
        """Actions for a decoded observation dict (one policy call at a time)."""
        try:
            obs = self.key_map(obs)
        except KeyMapRequestError as e:
            raise RequestError(str(e)) from e
        flat, single = self.prepare(obs)
        with self._lock:
            t0 = time.perf_counter()
            try:
                chunk = self.policy.sample_actions(flat)
            except (ContractError, PolicyAdapterError) as e:
                raise RequestError(str(e)) from e
            actions = _as_numpy(chunk.actions).astype(np.float32, copy=False)  # (B, H, D_a)
            ms = (time.perf_counter() - t0) * 1e3
        self.infer_ms.add(ms)
        if actions.ndim != 3 or actions.shape[0] != len(flat[TASK]):
            raise RuntimeError(f"policy returned actions of shape {actions.shape}, expected (B, H, D_a)")
        return {"actions": actions[0] if single else actions, "server_timing": {"infer_ms": round(ms, 3)}}

    def warmup(self) -> float:
        """One inference on a fake observation (first calls are slow); the noise seed is then reset.

        Returns its milliseconds."""
        inp = self.inputs
        spec = DatasetSpec.robot(cameras=inp.cameras, image_size=inp.image_size, state_dim=max(inp.state_dim, 1),
                                 action_dim=inp.action_dim)
        fake = fake_observation(spec, batch_size=1, n_obs=inp.n_obs)
        obs = {image_key(c): v[0] for c, v in fake.images.items()}  # (n_obs, H, W, 3)
        if inp.state_dim:
            obs[STATE] = fake.state[0]  # (n_obs, D_s)
        obs[TASK] = fake.task[0]
        t0 = time.perf_counter()
        flat, _ = self.prepare(obs)
        with self._lock:
            self.policy.sample_actions(flat)
            self.policy.reset(self.seed)
        self.warmup_ms = (time.perf_counter() - t0) * 1e3
        return self.warmup_ms


# ------------------------------------------------------------------------------------ network side


def is_loopback(host: str) -> bool:
    """Whether ``host`` names only this machine (``localhost``, 127.0.0.0/8, ::1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a hostname or "0.0.0.0"-like wildcard: treat as exposed


def check_api_key(key: str | None, host: str) -> str | None:
    """The key to enforce (or None on loopback without one); raises :class:`ServeError` when unusable."""
    if key is None or key == "":
        if not is_loopback(host):
            raise ServeError(f"host {host!r} is not loopback: serving beyond this machine requires an API key; "
                             f"set {API_KEY_ENV}=<at least {MIN_API_KEY_LEN} random characters> "
                             "(e.g. `openssl rand -hex 24`) or bind host=127.0.0.1")
        return None
    key = str(key)
    if len(key) < MIN_API_KEY_LEN:
        raise ServeError(f"api_key: too short ({len(key)} characters); "
                         f"use at least {MIN_API_KEY_LEN} random characters")
    if not all(33 <= ord(c) < 127 for c in key):
        raise ServeError("api_key: use printable ASCII characters without spaces (it travels in an HTTP header)")
    return key


class HandshakeGuard:
    """Caps the connections still in their opening handshake, in total and per address: past a cap
    the oldest pending one is aborted (event-loop thread only; see the module docstring)."""

    def __init__(self, max_pending: int, max_per_address: int):
        self.max_pending, self.max_per_address = int(max_pending), int(max_per_address)
        self.pending: dict[Any, str] = {}  # transport -> address, oldest first
        self.dropped = self.peak = 0

    def opened(self, transport: Any) -> None:
        """A TCP connection was accepted: track it, dropping the oldest pending ones past a cap."""
        peer = transport.get_extra_info("peername")
        addr = str(peer[0]) if isinstance(peer, (tuple, list)) and peer else str(peer)
        same = [t for t, a in self.pending.items() if a == addr]
        while len(same) >= self.max_per_address:
            self._drop(same.pop(0))
        while len(self.pending) >= self.max_pending:
            self._drop(next(iter(self.pending)))
        self.pending[transport] = addr
        self.peak = max(self.peak, len(self.pending))

    def _drop(self, transport: Any) -> None:
        self.pending.pop(transport, None)
        self.dropped += 1
        transport.abort()

    def done(self, transport: Any) -> None:
        """The handshake request arrived (or the connection closed): no longer pending."""
        self.pending.pop(transport, None)


def _guarded_connection(guard: HandshakeGuard) -> type:
    """A websockets ``ServerConnection`` class that reports to ``guard``."""
    from websockets.asyncio.server import ServerConnection

    class GuardedConnection(ServerConnection):
        def connection_made(self, transport: Any) -> None:
            guard.opened(transport)
            super().connection_made(transport)

        def process_event(self, event: Any) -> None:
            if self.request is None:  # the first event is the handshake request
                guard.done(self.transport)
            super().process_event(event)

        def connection_lost(self, exc: Exception | None) -> None:
            guard.done(self.transport)
            super().connection_lost(exc)

    return GuardedConnection


class PolicyServer:
    """The websocket server around a :class:`PolicyRunner`.

    ``start()`` serves from a background thread (returns once bound; ``port`` then holds the
    real port, useful with ``port=0``); ``serve_forever()`` serves in the calling thread until
    ``stop()`` or Ctrl-C. Usable as a context manager (start / stop).
    """

    def __init__(self, runner: PolicyRunner, host: str = "127.0.0.1", port: int = 8000, api_key: str | None = None,
                 max_message_bytes: int = 16 * 2**20, max_clients: int = 16, max_pending_handshakes: int = 64,
                 max_pending_per_address: int = 8, handshake_timeout_s: float = 5.0,
                 idle_timeout_s: float | None = 600.0):
        """Serve ``runner`` on ``host:port``; see :func:`check_api_key` for the key rules and the module
        docstring for the handshake caps and timeouts (``idle_timeout_s`` None: never)."""
        if not 0 <= int(port) < 65536:
            raise ServeError(f"port: must be in [0, 65535], got {port}")
        if max_message_bytes < 1024:
            raise ServeError(f"max_message_mb: must allow at least 1 KiB, got {max_message_bytes} bytes")
        for name, v in (("max_clients", max_clients), ("max_pending_handshakes", max_pending_handshakes),
                        ("max_pending_per_address", max_pending_per_address)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ServeError(f"{name}: must be an int >= 1, got {v!r}")
        for name, v in (("handshake_timeout_s", handshake_timeout_s), ("idle_timeout_s", idle_timeout_s)):
            if not (v is None and name == "idle_timeout_s") and not (isinstance(v, (int, float)) and 0 < v < 1e6):
                raise ServeError(f"{name}: must be a positive number of seconds, got {v!r}"
                                 + (" (null: never)" if name == "idle_timeout_s" else ""))
        self.runner, self.host, self.port = runner, host, int(port)
        self._api_key = check_api_key(api_key, host)
        self._expected_auth = None if self._api_key is None else f"Api-Key {self._api_key}".encode()
        self.max_message_bytes, self.max_clients = int(max_message_bytes), int(max_clients)
        self.handshake_timeout_s, self.idle_timeout_s = float(handshake_timeout_s), idle_timeout_s
        self.guard = HandshakeGuard(max_pending_handshakes, max_pending_per_address)
        self.wire_limits = runner.wire_limits()
        self.latency = LatencyStats(runner.infer_ms.window)  # whole server-side time per request
        self.counts = {"connections": 0, "requests": 0, "errors": 0, "rejected": 0, "idle_closed": 0}
        self.clients = 0
        self._started = time.time()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlastack-infer")
        self._decoder = ThreadPoolExecutor(max_workers=2, thread_name_prefix="vlastack-decode")
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._failure: BaseException | None = None

    # ---------------------------------------------------------------- reports

    @property
    def requires_api_key(self) -> bool:
        """Whether connections must present the API key."""
        return self._api_key is not None

    def health(self, authorized: bool = True) -> dict[str, Any]:
        """Status, counts and latency (ms, server-side: receipt of a request to its reply); only the
        status when a key is configured and the request did not present it."""
        if self._api_key is not None and not authorized:
            return {"status": "ok"}
        return {"status": "ok", "protocol": PROTOCOL,
                "policy": getattr(self.runner.policy.policy, "name", None),
                "uptime_s": round(time.time() - self._started, 1), "clients": self.clients, **self.counts,
                "dropped_handshakes": self.guard.dropped, "pending_handshakes": len(self.guard.pending),
                "latency_ms": self.latency.summary(), "infer_ms": self.runner.infer_ms.summary(),
                "requires_api_key": self.requires_api_key}

    def metadata(self) -> dict[str, Any]:
        """Sent to every client on connect: the policy's inputs and outputs plus current latency."""
        return {**self.runner.metadata(), "max_message_bytes": self.max_message_bytes,
                "latency_ms": self.latency.summary(), "infer_ms": self.runner.infer_ms.summary()}

    # ---------------------------------------------------------------- websocket handlers

    def _process_request(self, connection: Any, request: Any) -> Any:
        """Opening handshake: health checks, API key, client limit (an HTTP response refuses)."""
        path = request.path.split("?", 1)[0]
        given = request.headers.get_all("Authorization")
        ok = self._expected_auth is None or (
            len(given) == 1 and hmac.compare_digest(given[0].encode("utf-8", "replace"), self._expected_auth))
        if path == HEALTH_PATH:
            resp = connection.respond(http.HTTPStatus.OK, json.dumps(self.health(authorized=ok)) + "\n")
            del resp.headers["Content-Type"]
            resp.headers["Content-Type"] = "application/json"
            return resp
        if self._expected_auth is not None:
            if not ok:
                self.counts["rejected"] += 1
                log.warning("refused a connection from %s: %s API key", connection.remote_address,
                            "missing" if not given else "wrong")
                return connection.respond(http.HTTPStatus.UNAUTHORIZED,
                                          "missing or wrong API key (header 'Authorization: Api-Key <key>')\n")
        if self.clients >= self.max_clients:
            self.counts["rejected"] += 1
            return connection.respond(http.HTTPStatus.SERVICE_UNAVAILABLE,
                                      f"server busy: {self.clients} clients connected "
                                      f"(max_clients={self.max_clients})\n")
        return None

    async def _handle(self, ws: Any) -> None:
        """One client: metadata, then request -> reply until it disconnects."""
        from websockets.exceptions import ConnectionClosed

        loop = asyncio.get_running_loop()
        self.clients += 1
        self.counts["connections"] += 1
        try:
            await ws.send(packb(self.metadata()))
            while True:
                try:
                    message = await asyncio.wait_for(ws.recv(), self.idle_timeout_s)
                except TimeoutError:
                    self.counts["idle_closed"] += 1
                    await ws.close(1001, f"idle for {self.idle_timeout_s:g} s")
                    return
                t0 = time.perf_counter()
                self.counts["requests"] += 1
                try:
                    if isinstance(message, str):
                        raise RequestError("expected a binary msgpack message, got a text frame")
                    obs = await loop.run_in_executor(self._decoder, unpackb, message, self.wire_limits)
                    del message
                    reply = await loop.run_in_executor(self._executor, self.runner.infer, obs)
                except RequestError as e:
                    self.counts["errors"] += 1
                    await ws.send(f"bad request: {e}")
                    continue
                except Exception as e:  # the policy failed: report, keep serving
                    self.counts["errors"] += 1
                    log.error("inference failed:\n%s", traceback.format_exc())
                    await ws.send(f"inference failed: {type(e).__name__}: {e}")
                    continue
                ms = (time.perf_counter() - t0) * 1e3
                reply["server_timing"]["server_ms"] = round(ms, 3)
                self.latency.add(ms)
                await ws.send(packb(reply))
        except ConnectionClosed as e:
            code = getattr(e.sent, "code", None) or getattr(e.rcvd, "code", None)
            if code == 1009:
                self.counts["errors"] += 1
                log.warning("closed a connection: message larger than %d bytes", self.max_message_bytes)
        finally:
            self.clients -= 1

    # ---------------------------------------------------------------- lifecycle

    async def _main(self, on_ready: Any = None) -> None:
        """Bind, signal readiness (and call ``on_ready(self)``), serve until :meth:`stop`."""
        from websockets.asyncio.server import serve

        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with serve(self._handle, self.host, self.port, process_request=self._process_request,
                         compression=None, max_size=self.max_message_bytes, max_queue=4,
                         open_timeout=self.handshake_timeout_s, create_connection=_guarded_connection(self.guard),
                         logger=logging.getLogger("vlastack.serve.ws")) as server:
            self.port = int(server.sockets[0].getsockname()[1])
            self._ready.set()
            if on_ready is not None:
                on_ready(self)
            await self._stop.wait()

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as e:  # surfaced by start()
            self._failure = e
            self._ready.set()

    def start(self, timeout: float = 30.0) -> "PolicyServer":
        """Serve from a daemon thread; returns once the socket is bound (raises if binding failed)."""
        if self._thread is not None:
            raise RuntimeError("server already started")
        self._thread = threading.Thread(target=self._run, name="vlastack-serve", daemon=True)
        self._thread.start()
        if not self._ready.wait(timeout):
            raise ServeError(f"server did not start within {timeout} s")
        if self._failure is not None:
            raise ServeError(f"cannot serve on {self.host}:{self.port}: {self._failure}") from self._failure
        return self

    def serve_forever(self, on_ready: Any = None) -> None:
        """Serve in this thread until :meth:`stop` (from another thread) or KeyboardInterrupt."""
        try:
            asyncio.run(self._main(on_ready))
        finally:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._decoder.shutdown(wait=False, cancel_futures=True)

    def stop(self, timeout: float = 10.0) -> None:
        """Close every connection and the socket; idempotent."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            try:
                self._loop.call_soon_threadsafe(self._stop.set)
            except RuntimeError:  # loop already closed
                pass
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._decoder.shutdown(wait=False, cancel_futures=True)

    def __enter__(self) -> "PolicyServer":
        return self.start()

    def __exit__(self, *exc: Any) -> None:
        self.stop()


# ------------------------------------------------------------------------------------ entry points


@dataclass
class ServeConfig:
    """``vlastack serve`` settings (``configs/serve.yaml``)."""

    checkpoint: str
    device: str = "cpu"
    host: str = "127.0.0.1"
    port: int = 8000
    api_key: str | None = None
    api_key_env: str | None = API_KEY_ENV
    max_message_mb: float = 16.0
    max_clients: int = 16
    max_batch: int | None = None
    max_pending_handshakes: int = 64
    max_pending_per_address: int = 8
    handshake_timeout_s: float = 5.0
    idle_timeout_s: float | None = 600.0
    sampling: Mapping[str, Any] | None = None
    runtime: str = "torch"  # torch | onnxruntime (onnx) | openvino (a `vlastack export` folder) | cudagraphs
    seed: int | None = 0
    warmup: bool = True
    latency_window: int = 1000
    key_map: Mapping[str, str] | None = None

    def resolved_api_key(self) -> str | None:
        """``api_key`` if set, else the environment variable ``api_key_env`` (None when neither)."""
        if self.api_key not in (None, ""):
            return str(self.api_key)
        return os.environ.get(self.api_key_env) or None if self.api_key_env else None


def check_settings(cfg: ServeConfig) -> tuple[str | None, str]:
    """The settings checks that need no policy: returns (API key or None, checkpoint directory); raises
    :class:`ServeError` naming the problem."""
    if not cfg.checkpoint or cfg.checkpoint == "???":
        raise ServeError("checkpoint: required, e.g. checkpoint=runs/my_run/checkpoints/last")
    key = check_api_key(cfg.resolved_api_key(), cfg.host)  # fail before the slow load
    if cfg.max_message_mb <= 0:
        raise ServeError(f"max_message_mb: must be > 0, got {cfg.max_message_mb}")
    if str(cfg.device).startswith("cuda"):
        import torch

        if not torch.cuda.is_available():
            raise ServeError(f"device: {cfg.device!r} requested but CUDA is not available; use device=cpu")
    try:
        return key, resolve_checkpoint(cfg.checkpoint)
    except FileNotFoundError as e:
        raise ServeError(str(e)) from e


def build_server(cfg: ServeConfig) -> PolicyServer:
    """Check the settings, load the checkpoint and build (not start) the server."""
    key, path = check_settings(cfg)
    try:
        policy = load_policy_for(path, cfg.runtime, cfg.device, dict(cfg.sampling or {}))
    except (PolicyAdapterError, FileNotFoundError, ImportError) as e:
        raise ServeError(str(e)) from e
    runner = PolicyRunner(policy, seed=cfg.seed, latency_window=cfg.latency_window, checkpoint=path,
                          max_batch=cfg.max_batch, key_map=cfg.key_map)
    if cfg.warmup:
        runner.warmup()
    return PolicyServer(runner, cfg.host, cfg.port, key, int(cfg.max_message_mb * 2**20), cfg.max_clients,
                        cfg.max_pending_handshakes, cfg.max_pending_per_address, cfg.handshake_timeout_s,
                        cfg.idle_timeout_s)


def config_from_hydra(hcfg: Any) -> ServeConfig:
    """A :class:`ServeConfig` from the composed Hydra config (unknown keys are an error)."""
    from omegaconf import OmegaConf

    d = OmegaConf.to_container(hcfg, resolve=True)
    if OmegaConf.is_missing(hcfg, "checkpoint"):
        raise ServeError("checkpoint: required, e.g. `vlastack serve checkpoint=runs/my_run/checkpoints/last`")
    names = set(ServeConfig.__dataclass_fields__)
    unknown = sorted(set(d) - names)
    if unknown:
        raise ServeError(f"unknown serve settings {unknown}; valid: {sorted(names)}")
    if d.get("sampling") is not None and not isinstance(d["sampling"], dict):
        raise ServeError(f"sampling: expected a mapping such as {{vision_steps: 8}}, got {d['sampling']!r}")
    if d.get("key_map") is not None and not isinstance(d["key_map"], dict):
        raise ServeError("key_map: expected a mapping from client keys to ours, such as "
                         f"{{observation/image: observation.images.left}}, got {d['key_map']!r}")
    return ServeConfig(**d)


def command_job(hcfg: Any) -> int:
    """One ``vlastack serve`` job: load the policy, serve until Ctrl-C (exit code 0)."""
    server = build_server(config_from_hydra(hcfg))

    def ready(srv: PolicyServer) -> None:
        w = srv.runner.warmup_ms
        print(f"serving {srv.runner.metadata()['policy']} ({srv.runner.checkpoint}) on ws://{srv.host}:{srv.port} "
              f"- health: http://{srv.host}:{srv.port}{HEALTH_PATH} - api key "
              f"{'required' if srv.requires_api_key else 'off (loopback)'}"
              + (f" - warm-up inference {w:.0f} ms" if w is not None else ""), flush=True)

    try:
        server.serve_forever(on_ready=ready)
    except KeyboardInterrupt:
        print("\nstopped", file=sys.stderr)
        return 0
    except OSError as e:  # address in use, permission denied
        print(f"vlastack serve: cannot listen on {server.host}:{server.port}: {e}", file=sys.stderr)
        return 2
    return 0


def _check(hcfg: Any) -> None:
    check_settings(config_from_hydra(hcfg))


#: ``sampling.vision_steps=8`` adds a key to the open ``sampling`` dictionary without Hydra's ``+``
REWRITE = hydra_app.overrides_rewriter(("sampling.",))
COMMAND = hydra_app.Command("serve", run=command_job, check=_check, errors=(ServeError,), rewrite=REWRITE)


def main(argv: list[str] | None = None) -> int:
    """``vlastack serve [Hydra flags and overrides]``: a Hydra app (:mod:`vlastack.hydra_app`); logs go to stderr
    and the run directory's ``serve.log``; returns the exit code (2 on bad settings)."""
    return hydra_app.run(COMMAND, argv)


serve_main = main

if __name__ == "__main__":
    sys.exit(main())
