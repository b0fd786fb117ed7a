"""Export a policy's whole chunk computation to ONNX Runtime or OpenVINO, and run it there.

    from vlastack.policies.export import export_policy, ExportedPolicy
    export_policy(policy, "out/dust_onnx", format="onnx")            # writes chunk.onnx + export.json + checkpoint
    runtime = ExportedPolicy.load("out/dust_onnx", runtime="onnxruntime")
    chunk = runtime.sample_actions(obs, seed=0)                      # same chunk as policy.sample_actions(obs, seed=0)

One graph per export, batch 1: uint8 camera images (1, n_obs, H, W, 3) per camera, the state
(1, n_obs, D_s), the instruction's token embeddings (1, L, D_t) with their mask (1, L) (L = the
text encoder's ``max_length``), and the sampler's starting noise (``noise.action``, and DUST's
``noise.future``) -> actions (1, H, D_a) in physical units. Inside the graph: image scaling,
the vision encoder, state normalisation, the conditioning stack, every denoising step of the
sampler with its schedule unrolled (the sampling options are fixed at export and stored in
``export.json``), and unnormalisation.

The text encoder stays in torch: it runs once per new instruction and is cached
(``ExportedPolicy`` rebuilds it from the checkpoint copy written beside the graph), so the
export folder is also a loadable checkpoint. Noise is a graph input and is drawn with torch's
generator in the order ``sample_actions`` draws it, so a seed gives the same chunk in every
runtime (to float tolerance). Batches larger than one run the graph once per row.

Optional int8 weight quantization (``quantize=True``): ONNX Runtime's dynamic quantization,
int8 per-channel weights of the MatMul / Gemm nodes, activations quantized on the fly.
Optional bfloat16 inference in OpenVINO (``precision="bf16"``, stored in ``export.json``): OpenVINO
runs the graph's float32 ops in bf16 on CPUs with avx512_bf16 or AMX (about 1.7x less CPU per
DUST small chunk here; chunks then differ from float32 by about 1e-2, not 1e-4).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Iterator, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from ..types import STATE, TASK, ActionChunk, ContractError, Observation, image_key
from .base import Policy, check_tasks, load_policy, to_tensor


FORMATS = ("onnx", "openvino")
PRECISIONS = ("fp32", "bf16")  # bf16: OpenVINO's inference precision (ONNX Runtime runs fp32)
RUNTIMES = ("torch", "onnxruntime", "openvino", "cudagraphs")
#: the runtimes that run an export folder (on the CPU)
EXPORTED_RUNTIMES = ("onnxruntime", "openvino")
#: runtime names accepted on the command line -> canonical names
RUNTIME_ALIASES = {"onnx": "onnxruntime", "ort": "onnxruntime", "ov": "openvino", "graphs": "cudagraphs",
                   "cuda-graphs": "cudagraphs"}
EXPORT_FILE = "export.json"
ONNX_FILE = "chunk.onnx"
OV_FILE = "chunk.xml"
EXPORT_FORMAT = 1
OPSET = 18  # ReduceMean with axes as an input


def canonical_runtime(name: str) -> str:
    """``runtime=`` value -> one of :data:`RUNTIMES` (aliases ``onnx``, ``ort``, ``ov``)."""
    r = RUNTIME_ALIASES.get(str(name).lower(), str(name).lower())
    if r not in RUNTIMES:
        raise ValueError(f"unknown runtime {name!r}; choose one of {list(RUNTIMES)} (aliases {sorted(RUNTIME_ALIASES)})")
    return r


def _import_extra(module: str, extra: str):
    """Import an optional runtime package or raise naming the extra that installs it."""
    try:
        return __import__(module, fromlist=["_"])
    except ImportError as e:
        raise ImportError(f"{module} is not installed: pip install 'vlastack[{extra}]'") from e


# ---------------------------------------------------------------- the graph


class _GivenText(nn.Module):
    """Stands in for a policy's text encoder while tracing: returns the token embeddings it holds."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.name, self.out_dim, self.frozen = encoder.name, encoder.out_dim, True
        self.value: tuple[Tensor, Tensor] | None = None

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """texts (ignored) -> tokens (1, L, D_t), mask (1, L) bool, pooled (unused, zeros (1, D_t))."""
        tokens, mask = self.value
        return tokens, mask, tokens[:, 0] * 0.0


@contextlib.contextmanager
def _text_from_inputs(policy: Policy, stub: _GivenText) -> Iterator[_GivenText]:
    """Swap ``policy.text`` for ``stub`` for the duration of a trace."""
    object.__setattr__(policy, "text", stub)  # an instance attribute shadowing the registered module
    try:
        yield stub
    finally:
        del policy.__dict__["text"]  # the registered text encoder is visible again


class ChunkGraph(nn.Module):
    """A policy's chunk computation as one traceable module with tensor inputs only (batch 1).

    forward(*images, state, text, text_valid, *noise) -> actions (1, H, D_a); images uint8
    (1, n_obs, H, W, 3) in the order of ``config.cameras``, noise in the order of
    ``policy.initial_noise``'s keys. ``sampling`` are fixed ``sample_actions`` options.
    """

    def __init__(self, policy: Policy, sampling: Mapping[str, Any] | None = None):
        super().__init__()
        self.policy = policy
        self.sampling = dict(sampling or {})
        self.cameras = list(policy.config.cameras)
        self.noise_keys = list(policy.initial_noise(1).keys())
        self.text_stub = _GivenText(policy.text)  # built here: torch.compile cannot trace a module built in forward

    def input_names(self) -> list[str]:
        """Graph input names, in forward's order."""
        return self.names_for(self.policy)

    @staticmethod
    def names_for(policy: Policy) -> list[str]:
        """The input names of ``policy``'s chunk graph: images per camera, state, text, mask, noise."""
        return ([f"images.{c}" for c in policy.config.cameras] + ["state", "text", "text_valid"]
                + [f"noise.{k}" for k in policy.initial_noise(1).keys()])

    def example_inputs(self, text_length: int) -> tuple[Tensor, ...]:
        """Inputs of the right shapes and dtypes for tracing (batch 1)."""
        cfg, p = self.policy.config, self.policy
        n = int(getattr(cfg, "n_obs_steps", 1))
        h, w = cfg.image_size
        g = torch.Generator().manual_seed(0)
        images = [torch.randint(0, 256, (1, n, h, w, 3), dtype=torch.uint8, generator=g) for _ in self.cameras]
        state = torch.randn(1, n, max(int(getattr(cfg, "state_dim", 0) or 0), 1), generator=g)  # (1, n, D_s)
        text = torch.randn(1, text_length, int(p.text.out_dim), generator=g)  # (1, L, D_t)
        valid = torch.zeros(1, text_length, dtype=torch.bool)
        valid[:, : max(text_length // 2, 1)] = True  # (1, L)
        noise = list(p.initial_noise(1, g).values())
        return (*images, state, text, valid, *noise)

    def forward(self, *inputs: Tensor) -> Tensor:
        """Inputs as :meth:`input_names` -> actions (1, H, D_a) in physical units."""
        k = len(self.cameras)
        images, (state, text, valid), noise = inputs[:k], inputs[k:k + 3], inputs[k + 3:]
        data: dict[str, Any] = {image_key(c): x for c, x in zip(self.cameras, images)}
        if getattr(self.policy.config, "state_dim", 0):
            data[STATE] = state
        data[TASK] = ["instruction"]  # the text encoder is replaced by the given tokens
        with _text_from_inputs(self.policy, self.text_stub) as stub:
            stub.value = (text, valid)
            chunk = self.policy.sample_actions(data, noise=dict(zip(self.noise_keys, noise)), **self.sampling)
        return chunk.actions  # (1, H, D_a)


def _rms_norm_symbolic(g, x, normalized_shape, weight, eps):
    """aten::rms_norm for the legacy ONNX exporter (no RMSNormalization before opset 23):
    x * rsqrt(mean(x^2 over the normalised dims) + eps) * weight."""
    from torch.onnx import symbolic_helper as sh

    dims = sh._get_const(normalized_shape, "is", "normalized_shape")
    axes = g.op("Constant", value_t=torch.tensor(list(range(-len(dims), 0)), dtype=torch.long))
    eps_v = sh._maybe_get_const(eps, "f")
    eps_t = g.op("Constant", value_t=torch.tensor(torch.finfo(torch.float32).eps if eps_v is None or sh._is_value(eps_v) else float(eps_v),
                                                  dtype=torch.float32))
    ms = g.op("ReduceMean", g.op("Mul", x, x), axes, keepdims_i=1)
    y = g.op("Div", x, g.op("Sqrt", g.op("Add", ms, g.op("CastLike", eps_t, x))))
    return y if sh._is_none(weight) else g.op("Mul", y, weight)


def _register_symbolics() -> None:
    """Teach the legacy exporter the ops our policies use that its opset lacks."""
    torch.onnx.register_custom_op_symbolic("aten::rms_norm", _rms_norm_symbolic, OPSET)


def export_policy(policy: Policy, out: str | os.PathLike, format: str = "onnx", quantize: bool = False,
                  sampling: Mapping[str, Any] | None = None, text_length: int | None = None,
                  precision: str = "fp32") -> Path:
    """Write ``policy``'s chunk graph to folder ``out`` for ``format`` (``onnx`` or ``openvino``).

    ``out`` receives the graph (``chunk.onnx``, plus ``chunk.xml``/``.bin`` for OpenVINO), a
    checkpoint copy (``config.json`` + ``model.safetensors``: the text encoder and the input
    checks come from it) and ``export.json`` (inputs, sampling options, format, quantization).
    ``quantize`` stores int8 per-channel weights (ONNX Runtime dynamic quantization); ``precision``
    ``bf16`` makes OpenVINO infer in bfloat16 (the graph itself stays float32).
    Returns the folder. The write is atomic: a failed export leaves no partial folder.
    """
    if format not in FORMATS:
        raise ValueError(f"export format {format!r}: choose one of {list(FORMATS)}")
    if precision not in PRECISIONS:
        raise ValueError(f"export precision {precision!r}: choose one of {list(PRECISIONS)}")
    _import_extra("onnx", "onnx")
    sampling = dict(sampling or {})
    if float(sampling.get("eta", getattr(policy.config, "ddim_eta", 0.0)) or 0.0) != 0.0:
        raise ValueError("export needs a deterministic sampler: DDIM eta > 0 draws noise at every step; "
                         "export with sampling eta=0")
    for bad in ("seed", "generator", "noise"):
        if bad in sampling:
            raise ValueError(f"sampling.{bad}: not an export option (noise is a graph input)")
    policy = policy.eval()
    text_length = int(text_length or getattr(policy.text, "max_length", 0) or 0)
    if text_length < 1:
        raise ValueError(f"text encoder {policy.text.name!r} has no max_length: pass text_length=")
    graph = ChunkGraph(policy, sampling)
    example = graph.example_inputs(text_length)
    with torch.no_grad():
        reference = graph(*example)  # (1, H, D_a)
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        t0 = time.perf_counter()
        _register_symbolics()
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings: the input checks are constant for a fixed shape
            torch.onnx.export(graph, example, str(tmp / ONNX_FILE), input_names=graph.input_names(),
                              output_names=["actions"], opset_version=OPSET, dynamo=False)
        if quantize:
            _quantize(tmp / ONNX_FILE)
        if format == "openvino":
            ov = _import_extra("openvino", "openvino")
            ov.save_model(ov.convert_model(str(tmp / ONNX_FILE)), str(tmp / OV_FILE), compress_to_fp16=False)
        policy.save_pretrained(tmp)
        names = graph.input_names()
        meta = {"format": format, "export_format": EXPORT_FORMAT, "policy": policy.name, "quantized": bool(quantize),
                "precision": precision,
                "graph": OV_FILE if format == "openvino" else ONNX_FILE, "onnx": ONNX_FILE, "opset": OPSET,
                "sampling": sampling, "text_length": text_length, "cameras": graph.cameras,
                "noise": graph.noise_keys, "export_seconds": round(time.perf_counter() - t0, 2),
                "inputs": {n: {"shape": list(x.shape), "dtype": str(x.dtype).replace("torch.", "")}
                           for n, x in zip(names, example)},
                "output": {"actions": list(reference.shape)}}
        (tmp / EXPORT_FILE).write_text(json.dumps(meta, indent=2))
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _quantize(path: Path) -> None:
    """Replace the ONNX model at ``path`` by its dynamic int8 (per-channel weights) quantization."""
    q = _import_extra("onnxruntime.quantization", "onnx")
    fp32 = path.with_suffix(".fp32.onnx")
    os.replace(path, fp32)
    logging.disable(logging.WARNING)  # the quantizer logs every non-float tensor it leaves alone
    try:
        q.quantize_dynamic(str(fp32), str(path), per_channel=True, weight_type=q.QuantType.QInt8,
                           op_types_to_quantize=["MatMul", "Gemm"])  # the denoiser's weights; convs stay fp32
    finally:
        logging.disable(logging.NOTSET)
    fp32.unlink()


# ---------------------------------------------------------------- runtimes


class _OnnxRuntimeSession:
    """ONNX Runtime session on the CPU with ``threads`` intra-op threads."""

    def __init__(self, path: Path, threads: int):
        ort = _import_extra("onnxruntime", "onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])

    computes_in = "f32"  # what the runtime computes in (ONNX Runtime runs the float32 graph)

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph: input name -> array; returns actions (1, H, D_a)."""
        return self.session.run(["actions"], feeds)[0]


class _OpenVINOSession:
    """OpenVINO compiled model on the CPU, ``threads`` threads, float32 (or ``precision="bf16"``) inference."""

    def __init__(self, path: Path, threads: int, precision: str = "fp32"):
        ov = _import_extra("openvino", "openvino")
        core = ov.Core()
        self.model = core.compile_model(str(path), "CPU", {"INFERENCE_NUM_THREADS": threads,
                                                           "INFERENCE_PRECISION_HINT": precision.replace("fp", "f"),
                                                           "PERFORMANCE_HINT": "LATENCY"})
        self.request = self.model.create_infer_request()

    @property
    def computes_in(self) -> str:
        """The precision the compiled model computes in: ``bf16`` only where the CPU has it, else ``f32``."""
        return self.model.get_property("INFERENCE_PRECISION_HINT").get_type_name()  # an openvino Type

    def __call__(self, feeds: dict[str, np.ndarray]) -> np.ndarray:
        """Run the graph: input name -> array; returns actions (1, H, D_a)."""
        res = self.request.infer(feeds)
        return np.asarray(res[self.model.output(0)])


def read_export(path: str | os.PathLike) -> dict[str, Any]:
    """The ``export.json`` of an export folder, checked; raises naming the command that makes one."""
    f = Path(path) / EXPORT_FILE
    if not f.is_file():
        raise FileNotFoundError(f"{path} is not an exported policy (no {EXPORT_FILE}); make one with "
                                f"`vlastack export checkpoint={path} format=onnx out=DIR` and pass checkpoint=DIR")
    meta = json.loads(f.read_text())
    if meta.get("export_format") != EXPORT_FORMAT:
        raise ValueError(f"{f}: export format {meta.get('export_format')!r}, this code reads {EXPORT_FORMAT}")
    return meta


class ExportedPolicy:
    """An exported chunk graph run by ONNX Runtime or OpenVINO, with the policy's interface.

    ``sample_actions(obs, generator=None, seed=None)`` checks inputs like the torch policy,
    encodes the instruction with the policy's (torch, cached) text encoder, draws the noise
    with torch in the policy's order and runs the graph once per batch row. ``config`` and
    ``device`` are the policy's, so the rollout adapters treat it like a torch policy.
    """

    def __init__(self, policy: Policy, meta: Mapping[str, Any], graph: Path, runtime: str, threads: int | None = None):
        self.policy = policy.eval()
        self.meta = dict(meta)
        self.runtime = canonical_runtime(runtime)
        if self.runtime == "torch":
            raise ValueError("ExportedPolicy runs exported graphs: runtime onnxruntime or openvino")
        threads = int(threads or torch.get_num_threads())
        precision = self.meta.get("precision", "fp32")
        if self.runtime == "onnxruntime":
            if precision != "fp32":
                raise ValueError(f"this export asks for {precision} inference, which only OpenVINO provides: use "
                                 "runtime=openvino, or export again without precision=")
            self.session = _OnnxRuntimeSession(graph, threads)
        else:
            self.session = _OpenVINOSession(graph, threads, precision)
        self.config = policy.config
        self.name = policy.name

    @property
    def computes_in(self) -> str:
        """The precision the runtime actually computes in (``f32``, or ``bf16`` where OpenVINO has it)."""
        return self.session.computes_in

    @classmethod
    def load(cls, path: str | os.PathLike, runtime: str = "onnxruntime", threads: int | None = None,
             precision: str | None = None) -> "ExportedPolicy":
        """Open an export folder written by :func:`export_policy` in ``runtime``.

        ONNX Runtime runs ``chunk.onnx``; OpenVINO runs ``chunk.xml`` when exported for it, else
        ``chunk.onnx`` (OpenVINO reads ONNX directly). ``precision`` overrides the export's
        inference precision (``fp32`` or OpenVINO's ``bf16``).
        """
        meta = read_export(path)
        if precision is not None:
            if precision not in PRECISIONS:
                raise ValueError(f"precision {precision!r}: choose one of {list(PRECISIONS)}")
            meta = {**meta, "precision": precision}
        runtime = canonical_runtime(runtime)
        graph = Path(path) / (meta["graph"] if runtime == "openvino" else meta["onnx"])
        return cls(load_policy(path), meta, graph, runtime, threads)

    @property
    def device(self) -> torch.device:
        """Where inputs are prepared: the CPU."""
        return torch.device("cpu")

    def eval(self) -> "ExportedPolicy":
        """No-op (graphs have no training mode); returns self."""
        return self

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The noise the torch policy would draw (same order, same generator)."""
        return self.policy.initial_noise(batch, generator)

    def sample_actions(self, obs: Observation | Mapping[str, Any], generator: torch.Generator | None = None,
                       seed: int | None = None) -> ActionChunk:
        """A chunk (B, H, D_a) in physical units; ``seed`` or ``generator`` as in the torch policy."""
        names, inputs = chunk_inputs(self.policy, obs, int(self.meta["text_length"]), generator, seed)
        arrays = [x.numpy() for x in inputs]
        rows = [self.session({n: a[i:i + 1] for n, a in zip(names, arrays)}) for i in range(arrays[0].shape[0])]
        return ActionChunk(torch.from_numpy(np.concatenate(rows)), extras={"runtime": self.runtime})


def chunk_inputs(policy: Policy, obs: Observation | Mapping[str, Any], text_length: int,
                 generator: torch.Generator | None = None, seed: int | None = None,
                 device: torch.device | str = "cpu") -> tuple[list[str], list[Tensor]]:
    """A chunk graph's inputs for ``obs`` (batch B): names and tensors in :meth:`ChunkGraph.input_names` order.

    Images uint8 (B, n, H, W, 3) per camera, state (B, n, D_s) float32 (zeros without a state),
    the instruction's tokens (B, L, D_t) and mask (B, L) from the policy's text encoder, padded to
    ``text_length``, and the starting noise drawn as ``policy.sample_actions`` draws it.
    """
    cfg = policy.config
    data = obs.to_flat() if isinstance(obs, Observation) else obs
    if not isinstance(data, Mapping):
        raise TypeError(f"sample_actions takes an Observation or a flat dict, got {type(data).__name__}")
    n = int(getattr(cfg, "n_obs_steps", 1))
    h, w = cfg.image_size
    images = []
    for c in cfg.cameras:
        k = image_key(c)
        if k not in data:
            raise ContractError(f"missing camera {c!r}: expected {k!r} (uint8 images); the graph reads cameras "
                                f"{list(cfg.cameras)} (cached features are not a graph input)")
        x = to_tensor(data[k])
        x = x[:, None] if x.dim() == 4 else x  # (B, n, H, W, 3)
        if x.dtype != torch.uint8 or x.dim() != 5 or tuple(x.shape[1:]) != (n, h, w, 3):
            raise ContractError(f"{k}: expected uint8 images (B, {n}, {h}, {w}, 3), got {x.dtype} {tuple(x.shape)}")
        images.append(x.contiguous())
    b = images[0].shape[0]
    d_s = int(getattr(cfg, "state_dim", 0) or 0)
    if d_s:
        if STATE not in data:
            raise ContractError(f"missing {STATE!r}: expected float (B, {n}, {d_s})")
        state = to_tensor(data[STATE]).float()
        state = state[:, None] if state.dim() == 2 else state  # (B, n, D_s)
        if tuple(state.shape) != (b, n, d_s):
            raise ContractError(f"{STATE}: expected (B={b}, {n}, {d_s}), got {tuple(state.shape)}")
    else:
        state = torch.zeros(b, n, 1)
    tasks = check_tasks(data.get(TASK), b)
    with torch.no_grad():
        tokens, mask, _ = policy.text(tasks)  # (B, L', D_t), (B, L')
    if tokens.shape[1] > text_length:
        raise ContractError(f"instruction of {tokens.shape[1]} tokens: the graph reads at most {text_length}")
    text = torch.zeros(b, text_length, tokens.shape[2], device=tokens.device)  # (B, L, D_t)
    valid = torch.zeros(b, text_length, dtype=torch.bool, device=tokens.device)  # (B, L)
    text[:, : tokens.shape[1]] = tokens.float()
    valid[:, : mask.shape[1]] = mask.bool()
    if seed is not None:
        generator = torch.Generator(device=policy.device).manual_seed(int(seed))
    noise = list(policy.initial_noise(b, generator).values())
    names = ChunkGraph.names_for(policy)
    return names, [t.to(device) for t in (*images, state.contiguous(), text, valid, *noise)]


def load_runtime_policy(path: str | os.PathLike, runtime: str = "torch", device: str = "cpu",
                        threads: int | None = None, sampling: Mapping[str, Any] | None = None) -> Any:
    """The policy behind ``runtime``: the torch policy at ``path``, its exported graph, or its CUDA graphs.

    ``runtime`` is one of :data:`RUNTIMES` (or an alias); the exported runtimes need ``path`` to be
    an export folder (:func:`export_policy`) and run on the CPU; ``cudagraphs`` runs the checkpoint
    through :class:`~vlastack.policies.cuda_graphs.GraphedPolicy` with ``sampling`` fixed (eager,
    with a logged reason, where graphs cannot run).
    """
    runtime = canonical_runtime(runtime)
    if runtime == "torch":
        return load_policy(path, map_location=device)
    if runtime == "cudagraphs":
        from .cuda_graphs import GraphedPolicy

        return GraphedPolicy(load_policy(path, map_location=device), sampling)
    if str(device) != "cpu":
        raise ValueError(f"runtime {runtime!r} runs on the CPU; got device={device!r} (use runtime=torch on GPUs)")
    return ExportedPolicy.load(path, runtime, threads)


__all__ = ["ChunkGraph", "ExportedPolicy", "export_policy", "chunk_inputs", "load_runtime_policy", "read_export",
           "canonical_runtime", "FORMATS", "RUNTIMES", "EXPORTED_RUNTIMES"]
