"""torch.distributed for the loop: process group from torchrun's environment, DDP or FSDP2 wrapping,
small collectives, and gathering full state dicts for rank-0 checkpoints.

``torchrun --nproc-per-node=N -m vlastack.cli train ...`` sets RANK / WORLD_SIZE / LOCAL_RANK;
without them the run is a single process and every helper here is a no-op. The policy is wrapped
as :class:`LossModule` (``forward(batch) -> (loss, metrics)``) so DDP's and FSDP's hooks see the
policy's ``compute_loss``. FSDP2 (``train.strategy=fsdp``) shards each transformer block
(:func:`wrap_units`) and then the rest of the policy.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping

import torch
import torch.distributed as dist
from torch import nn

from vlastack.policies import layers

#: the blocks FSDP2 shards one by one: the transformer blocks of DUST and Dita
WRAP_UNIT_TYPES: tuple[type, ...] = tuple(getattr(layers, n) for n in ("TransformerBlock", "DiTBlock", "MMDiTBlock",
                                                                       "LlamaBlock") if hasattr(layers, n))
#: submodules whose weights the network reads outside their block (DUST batches every adaLN modulation
#: of a stream in one place): they stay with the root unit, which is gathered for the whole forward
ROOT_HELD_TYPES: tuple[type, ...] = tuple(getattr(layers, n) for n in ("AdaLNZero",) if hasattr(layers, n))


@dataclass
class DistInfo:
    """Where this process stands: rank, world size, local rank, device, and whether a group is up."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")
    initialized: bool = False

    @property
    def is_main(self) -> bool:
        """Rank 0 (logs, checkpoints)."""
        return self.rank == 0


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one, else the machine's)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def setup(device: str = "auto", backend: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun (or with RANK/WORLD_SIZE set); pick the device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local = int(os.environ.get("LOCAL_RANK", str(rank)))
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            from .config import TrainConfigError

            raise TrainConfigError(f"train.device: {device!r} but CUDA is not available; use device=cpu or auto")
        dev = torch.device(device if ":" in device else f"cuda:{local}")  # set_device needs an index
        torch.cuda.set_device(dev)
    else:
        dev = torch.device("cpu")
    info = DistInfo(rank, world, local, dev, False)
    if world > 1:
        if backend == "auto":
            backend = "nccl" if dev.type == "cuda" else "gloo"
        if not dist.is_initialized():
            dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                    device_id=dev if dev.type == "cuda" else None)
        info.initialized = True
    return info


def teardown(info: DistInfo) -> None:
    """Leave the process group (if this module joined one)."""
    if info.initialized and dist.is_initialized():
        dist.destroy_process_group()


def barrier(info: DistInfo) -> None:
    """Wait for every rank."""
    if info.initialized:
        dist.barrier()


def broadcast_object(info: DistInfo, obj: Any) -> Any:
    """Rank 0's ``obj`` on every rank."""
    if not info.initialized:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(info: DistInfo, values: Mapping[str, float]) -> dict[str, float]:
    """Mean of float metrics over ranks (keys must match on every rank)."""
    if not info.initialized or not values:
        return dict(values)
    keys = sorted(values)
    t = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64,
                     device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return {k: float(v) / info.world for k, v in zip(keys, t.tolist())}


def all_reduce_sum(info: DistInfo, values: list[float]) -> list[float]:
    """Element-wise sum of a float list over ranks."""
    if not info.initialized:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=info.device if info.device.type == "cuda" else "cpu")
    dist.all_reduce(t)
    return t.tolist()


class LossModule(nn.Module):
    """``forward(batch)`` = ``policy.compute_loss(batch)``: what DDP / FSDP wrap."""

    def __init__(self, policy: nn.Module):
        super().__init__()
        self.policy = policy

    def forward(self, batch: Mapping[str, Any]):
        """(loss, metrics) of the policy on ``batch``."""
        return self.policy.compute_loss(batch)


def _split_held(m: nn.Module) -> list[nn.Module]:
    """``m`` as shardable units: itself, or (when it holds a :data:`ROOT_HELD_TYPES` module) its other
    children, recursively; the held modules and ``m``'s own parameters stay with the root."""
    if not any(p.requires_grad for p in m.parameters()):
        return []
    container = isinstance(m, (nn.ModuleList, nn.ModuleDict))  # no forward of their own: wrap the items
    if not container and not any(isinstance(x, ROOT_HELD_TYPES) for x in m.modules()):
        return [m]
    if isinstance(m, ROOT_HELD_TYPES):
        return []
    return [u for c in m.children() for u in _split_held(c)]


def wrap_units(policy: nn.Module) -> list[nn.Module]:
    """The modules FSDP2 shards as units: ``policy.fsdp_units()`` when defined, else every trainable
    transformer block of :data:`WRAP_UNIT_TYPES` (outermost only), minus the adaLN modulations the
    network reads outside the blocks (those stay with the root)."""
    own = getattr(policy, "fsdp_units", None)
    if callable(own):
        return list(own())
    units: list[nn.Module] = []
    inside: set[int] = set()
    for m in policy.modules():
        if id(m) in inside:
            continue
        if isinstance(m, WRAP_UNIT_TYPES) and any(p.requires_grad for p in m.parameters()):
            units.extend(_split_held(m))
            inside.update(id(x) for x in m.modules())
    return units


def wrap(policy: nn.Module, info: DistInfo, strategy: str, find_unused: bool = False) -> nn.Module:
    """The module the loop calls: the bare :class:`LossModule` (one process), DDP, or FSDP2."""
    module = LossModule(policy)
    if not info.initialized:
        return module
    if strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in wrap_units(policy):
            fully_shard(unit)
        fully_shard(module)
        return module
    from torch.nn.parallel import DistributedDataParallel as DDP

    return DDP(module, device_ids=[info.device.index] if info.device.type == "cuda" else None,
               find_unused_parameters=find_unused)


def is_fsdp(module: nn.Module) -> bool:
    """Whether ``module`` was sharded with FSDP2."""
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return False
    return isinstance(module, FSDPModule)


def no_sync(module: nn.Module, skip: bool):
    """A context that skips gradient synchronisation for accumulation micro-batches (DDP, FSDP2)."""
    import contextlib

    if not skip:
        return contextlib.nullcontext()
    if hasattr(module, "no_sync"):
        return module.no_sync()
    if is_fsdp(module):
        @contextlib.contextmanager
        def _fsdp():
            module.set_requires_gradient_sync(False)
            try:
                yield
            finally:
                module.set_requires_gradient_sync(True)
        return _fsdp()
    return contextlib.nullcontext()


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A sharded (DTensor) tensor gathered in full; plain tensors as they are (collective under FSDP)."""
    return t.full_tensor() if hasattr(t, "full_tensor") else t


def full_state_dict(policy: nn.Module) -> dict[str, torch.Tensor]:
    """The policy's state dict with sharded tensors gathered, on CPU (every rank must call it under FSDP)."""
    return {k: full_tensor(v).detach().to("cpu") for k, v in policy.state_dict().items()}


@torch.no_grad()
def load_full_state_dict(policy: nn.Module, state: Mapping[str, torch.Tensor]) -> None:
    """Load a full (unsharded) state dict into a possibly sharded policy."""
    own = policy.state_dict()
    for k, v in own.items():
        if k not in state:
            raise KeyError(f"training state lacks {k!r}")
        src = state[k].to(v.device if not hasattr(v, "device_mesh") else v.to_local().device)
        if hasattr(v, "device_mesh"):
            from torch.distributed.tensor import distribute_tensor

            v.copy_(distribute_tensor(src.to(v.dtype), v.device_mesh, v.placements))
        else:
            v.copy_(src)
