"""``vlastack export checkpoint=PATH format=onnx|openvino out=DIR [quantize=true] [precision=bf16] [sampling.<name>=<value>]``.

Writes the policy's whole chunk computation as one graph (:mod:`vlastack.policies.export`),
then checks it: the exported chunk and the torch chunk for the same observation and noise,
printed as their largest difference (float32 export: under 1e-4; ``precision=bf16``, OpenVINO's
bfloat16 inference: about 1e-2). Serve, deploy or evaluate
the folder with ``runtime=onnx`` or ``runtime=openvino``.
"""

from __future__ import annotations

import json
import sys
from typing import Any

USAGE = "usage: " + __doc__.split("\n\n")[0].strip("`.")
KEYS = ("checkpoint", "format", "out", "quantize", "precision", "text_length", "threads", "verify")


def parse_args(argv: list[str]) -> dict[str, Any]:
    """``key=value`` arguments -> dict (``sampling.<name>`` collected under ``sampling``); values parsed as JSON when they can be."""
    args: dict[str, Any] = {"sampling": {}}
    for a in argv:
        if "=" not in a:
            raise ValueError(f"argument {a!r}: expected key=value; keys: {list(KEYS)} and sampling.<name>")
        k, v = a.split("=", 1)
        try:
            val = json.loads(v)
        except ValueError:
            val = v
        if k.startswith("sampling."):
            args["sampling"][k[len("sampling."):]] = val
        elif k in KEYS:
            args[k] = val
        else:
            raise ValueError(f"unknown argument {k!r}; keys: {list(KEYS)} and sampling.<name>")
    for k in ("checkpoint", "out"):
        if not args.get(k):
            raise ValueError(f"{k}: required. {USAGE}")
    args.setdefault("format", "onnx")
    return args


def verify(out: str, runtime: str, threads: int | None = None, seed: int = 0) -> float:
    """Largest |exported - torch| over one chunk of a fake observation (same seed, so the same noise)."""
    import torch

    from vlastack.policies.export import ExportedPolicy
    from vlastack.rollout.policy_adapters import policy_inputs

    exported = ExportedPolicy.load(out, runtime, threads)
    obs = fake_inputs(policy_inputs(exported.config), seed)
    with torch.inference_mode():
        ref = exported.policy.sample_actions(obs, seed=seed, **exported.meta["sampling"]).actions
    got = exported.sample_actions(obs, seed=seed).actions
    return float((got - ref).abs().max())


def fake_inputs(inputs: Any, seed: int = 0) -> dict[str, Any]:
    """A flat batch-1 observation in the data contract for ``inputs`` (random images and state)."""
    import numpy as np

    from vlastack.types import STATE, TASK, image_key

    rng = np.random.default_rng(seed)
    h, w = inputs.image_size
    obs: dict[str, Any] = {image_key(c): rng.integers(0, 256, (1, inputs.n_obs, h, w, 3), dtype=np.uint8)
                           for c in inputs.cameras}
    if inputs.state_dim:
        obs[STATE] = rng.standard_normal((1, inputs.n_obs, inputs.state_dim)).astype(np.float32)
    obs[TASK] = ["open the drawer"]
    return obs


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``vlastack export``; returns the exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(USAGE + "\n\n" + __doc__.split("\n\n", 1)[1].strip())
        return 0
    try:
        args = parse_args(argv)
    except ValueError as e:
        print(f"vlastack export: {e}", file=sys.stderr)
        return 2
    import torch

    from vlastack.policies.base import load_policy
    from vlastack.policies.export import export_policy
    from vlastack.rollout.policy_adapters import PolicyAdapterError, resolve_checkpoint, resolve_sampling

    if args.get("threads"):
        torch.set_num_threads(int(args["threads"]))
    try:
        policy = load_policy(resolve_checkpoint(args["checkpoint"]))
        sampling = resolve_sampling(policy, args["sampling"])
        out = export_policy(policy, args["out"], format=args["format"], quantize=bool(args.get("quantize", False)),
                            sampling=sampling, text_length=args.get("text_length"),
                            precision=str(args.get("precision", "fp32")))
    except (FileNotFoundError, ValueError, ImportError, PolicyAdapterError) as e:
        print(f"vlastack export: {e}", file=sys.stderr)
        return 2
    extra = (", int8 weights" if args.get("quantize") else "") + (", bf16 inference" if args.get("precision") == "bf16" else "")
    print(f"exported {policy.name} ({args['format']}{extra}) to {out}")
    if args.get("verify", True):
        runtime = "openvino" if args["format"] == "openvino" or args.get("precision") == "bf16" else "onnxruntime"
        diff = verify(str(out), runtime)
        print(f"check: exported vs torch chunk, same noise: max |diff| = {diff:.3g} ({runtime})")
    return 0
