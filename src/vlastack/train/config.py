"""Typed configuration of ``vlastack train``: dataclasses behind the Hydra groups, checked at start.

The composed Hydra config (``configs/train.yaml`` + ``policy/``, ``dataset/``, ``train/``,
``experiment/``) is merged into :class:`TrainAppConfig`; a key that is not a field or a
value of the wrong type raises :class:`TrainConfigError` naming the full key and the valid
choices, and every section's ``__post_init__`` checks ranges. All of this happens before a
store is opened or a model is built, never an hour into a run.

The ``policy`` section is the policy's own config dataclass (``DUSTConfig``, ``DitaConfig``)
with two extra keys, ``name`` and ``preset``: a null field means "the preset's value", except
the data-contract fields ``cameras``, ``image_size``, ``state_dim`` and ``action_dim``, where
null means "what the dataset holds" (see :func:`vlastack.train.builder.policy_config`). Its
fields are checked against the policy's dataclass by :func:`check_policy_fields`.
"""

# no ``from __future__ import annotations``: OmegaConf reads these annotations at runtime
import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from omegaconf import MISSING

PRECISIONS = ("auto", "fp32", "bf16", "native_bf16")
STRATEGIES = ("ddp", "fsdp")
BACKENDS = ("auto", "gloo", "nccl")
RESUME_MODES = ("auto", "always", "never")
CACHE_MODES = ("auto", "on", "off")
LOGGERS = ("tensorboard", "wandb", "both", "none")  # metrics.jsonl is always written
WANDB_MODES = ("online", "offline", "disabled")
POLICY_META_KEYS = ("name", "preset")
#: policy-config fields that default to the dataset's values when left null
DATA_FIELDS = ("cameras", "image_size", "state_dim", "action_dim")


class TrainConfigError(ValueError):
    """A bad training setting; the message names the key, the problem and the valid choices."""


def _check(cond: bool, key: str, msg: str) -> None:
    if not cond:
        raise TrainConfigError(f"{key}: {msg}")


@dataclass
class OptimConfig:
    """AdamW with parameter groups (no weight decay on norms, biases and embeddings).

    A null ``lr``, ``weight_decay``, ``betas`` or ``eps`` takes the trained policy's published value
    (its config class's ``OPTIM_DEFAULTS``: DUST's AdamW betas (0.95, 0.999), wd 1e-5; Dita's betas
    (0.9, 0.95), wd 0.05), see :func:`resolve_optim`; a value set here (any ``train.optim.*``
    override) wins.
    """

    lr: Optional[float] = None
    weight_decay: Optional[float] = None
    betas: Optional[List[float]] = None
    eps: Optional[float] = None
    backbone_lr_scale: float = 0.1  # lr multiplier of a trainable vision backbone (policies may set their own)
    grad_clip: Optional[float] = 1.0  # max global gradient norm; null or 0: no clipping

    def __post_init__(self):
        _check(self.lr is None or self.lr > 0, "train.optim.lr", f"must be > 0 or null, got {self.lr}")
        _check(self.weight_decay is None or self.weight_decay >= 0, "train.optim.weight_decay",
               f"must be >= 0 or null, got {self.weight_decay}")
        _check(self.betas is None or (len(self.betas) == 2 and all(0 <= b < 1 for b in self.betas)),
               "train.optim.betas", f"must be two numbers in [0, 1) or null, got {self.betas}")
        _check(self.eps is None or self.eps > 0, "train.optim.eps", f"must be > 0 or null, got {self.eps}")
        _check(self.backbone_lr_scale >= 0, "train.optim.backbone_lr_scale", f"must be >= 0, got {self.backbone_lr_scale}")
        _check(self.grad_clip is None or self.grad_clip >= 0, "train.optim.grad_clip",
               f"must be >= 0 or null, got {self.grad_clip}")


@dataclass
class ScheduleConfig:
    """Linear warmup, then cosine decay to ``final_lr_ratio * lr`` at the last step.

    Warmup: ``warmup_steps`` or ``warmup_fraction`` of the schedule's length (re-planned with a
    wall-clock budget), not both; both null: the policy's published warmup (DUST: 5%).
    """

    warmup_steps: Optional[int] = None
    warmup_fraction: Optional[float] = None
    final_lr_ratio: float = 0.0

    def __post_init__(self):
        _check(self.warmup_steps is None or self.warmup_steps >= 0, "train.schedule.warmup_steps",
               f"must be >= 0 or null, got {self.warmup_steps}")
        _check(self.warmup_fraction is None or 0 <= self.warmup_fraction < 1, "train.schedule.warmup_fraction",
               f"must be in [0, 1) or null, got {self.warmup_fraction}")
        _check(self.warmup_steps is None or self.warmup_fraction is None, "train.schedule.warmup_steps",
               f"give warmup_steps ({self.warmup_steps}) or warmup_fraction ({self.warmup_fraction}), not both")
        _check(0 <= self.final_lr_ratio <= 1, "train.schedule.final_lr_ratio",
               f"must be in [0, 1], got {self.final_lr_ratio}")


#: where a policy publishes no optimiser value (its OPTIM_DEFAULTS lack the key)
FALLBACK_OPTIM: Dict[str, Any] = dict(lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05, warmup_steps=500)
OPTIM_KEYS = ("lr", "betas", "eps", "weight_decay")
WARMUP_KEYS = ("warmup_steps", "warmup_fraction")


def resolve_optim(train: "TrainConfig", policy_defaults: Dict[str, Any]) -> "TrainConfig":
    """``train`` with every null optimiser / warmup value filled from the policy's ``OPTIM_DEFAULTS``.

    Precedence, lowest first: :data:`FALLBACK_OPTIM`, the policy's defaults, then what
    ``train.optim`` / ``train.schedule`` set (configs/train/*.yaml, experiments, overrides).
    A warmup set either way (steps or fraction) replaces the policy's warmup as a whole.
    """
    unknown = sorted(set(policy_defaults) - set(OPTIM_KEYS) - set(WARMUP_KEYS))
    if unknown:
        raise ValueError(f"OPTIM_DEFAULTS: unknown keys {unknown}; valid: {list(OPTIM_KEYS + WARMUP_KEYS)}")
    base = {**FALLBACK_OPTIM, **policy_defaults}
    optim = dataclasses.replace(train.optim, **{
        k: (list(base[k]) if k == "betas" else base[k]) for k in OPTIM_KEYS if getattr(train.optim, k) is None})
    sched = train.schedule
    if sched.warmup_steps is None and sched.warmup_fraction is None:
        warm = {k: policy_defaults[k] for k in WARMUP_KEYS if k in policy_defaults} or \
            {"warmup_steps": FALLBACK_OPTIM["warmup_steps"]}
        sched = dataclasses.replace(sched, **warm)
    return dataclasses.replace(train, optim=optim, schedule=sched)


@dataclass
class EMAConfig:
    """Exponential moving average of the trainable weights; checkpoints export the EMA weights."""

    enabled: bool = True
    decay: float = 0.999
    warmup: bool = True  # effective decay min(decay, (1 + step) / (10 + step))

    def __post_init__(self):
        _check(0 <= self.decay < 1, "train.ema.decay", f"must be in [0, 1), got {self.decay}")


@dataclass
class SimEvalConfig:
    """In-loop simulation evaluation through ``vlastack eval`` (rank 0, on the latest checkpoint)."""

    every: int = 0  # steps between evaluations; 0: never
    overrides: List[str] = field(default_factory=list)  # eval overrides, e.g. [env=kitchen, "tasks=[OpenDrawer]"]

    def __post_init__(self):
        _check(self.every >= 0, "train.sim_eval.every", f"must be >= 0, got {self.every}")


@dataclass
class WandbConfig:
    """Weights & Biases run settings (``train.logger=wandb`` or ``both``; needs the ``wandb`` extra)."""

    project: str = "vlastack"
    entity: Optional[str] = None  # team or user; null: wandb's default
    name: Optional[str] = None  # run name; null: the run directory's name
    tags: List[str] = field(default_factory=list)
    mode: Optional[str] = None  # online, offline, disabled; null: WANDB_MODE, else wandb's default (online)

    def __post_init__(self):
        _check(bool(self.project), "train.wandb.project", "must be a non-empty project name")
        _check(self.mode is None or self.mode in WANDB_MODES, "train.wandb.mode",
               f"{self.mode!r} is not one of {WANDB_MODES} or null")


@dataclass
class TrainConfig:
    """The loop: batch, steps, budget, precision, distribution, logging, validation and checkpoints."""

    seed: int = 0
    batch_size: int = 64  # global: summed over ranks and accumulation steps
    grad_accum: int = 1  # micro-batches per optimizer step (on every rank)
    steps: int = 20000  # optimizer steps of the whole run (the schedule's length)
    max_minutes: Optional[float] = None  # wall-clock budget of the run: the schedule is fitted to it; null: none
    stop_after_steps: Optional[int] = None  # end this invocation after N more steps (resume continues)
    init_from: Optional[str] = None  # checkpoint to fine-tune from (weights; the normalizer is refitted)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on CPU; bf16 autocasts on either;
    #                          native_bf16: bf16 where the device computes it natively (CUDA, avx512_bf16 / AMX CPUs)
    device: str = "auto"  # auto: cuda when available, else cpu
    strategy: str = "ddp"  # under torchrun: ddp (replicate) or fsdp (FSDP2 shards the transformer blocks)
    backend: str = "auto"  # process group: auto (nccl on CUDA, gloo on CPU), gloo or nccl
    threads: Optional[int] = None  # torch intra-op CPU threads per process; null: torch's default (all cores)
    log_every: int = 10
    logger: str = "tensorboard"  # tensorboard, wandb, both or none (metrics.jsonl is always written)
    wandb: WandbConfig = field(default_factory=WandbConfig)
    val_every: int = 500  # 0: only at the end
    val_batches: int = 20
    ckpt_every: int = 1000  # 0: only at the end
    keep_last: int = 3  # step checkpoints kept besides the best one
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    ema: EMAConfig = field(default_factory=EMAConfig)
    sim_eval: SimEvalConfig = field(default_factory=SimEvalConfig)

    def __post_init__(self):
        _check(self.seed >= 0, "train.seed", f"must be >= 0, got {self.seed}")
        _check(self.batch_size >= 1, "train.batch_size", f"must be >= 1, got {self.batch_size}")
        _check(self.grad_accum >= 1, "train.grad_accum", f"must be >= 1, got {self.grad_accum}")
        _check(self.steps >= 1, "train.steps", f"must be >= 1, got {self.steps}")
        _check(self.max_minutes is None or self.max_minutes > 0, "train.max_minutes",
               f"must be > 0 or null, got {self.max_minutes}")
        _check(self.stop_after_steps is None or self.stop_after_steps >= 1, "train.stop_after_steps",
               f"must be >= 1 or null, got {self.stop_after_steps}")
        _check(self.init_from is None or bool(self.init_from), "train.init_from", "must be a checkpoint path or null")
        _check(self.precision in PRECISIONS, "train.precision", f"{self.precision!r} is not one of {PRECISIONS}")
        _check(self.device == "auto" or self.device.split(":")[0] in ("cpu", "cuda"), "train.device",
               f"{self.device!r} is not auto, cpu, cuda or cuda:N")
        _check(self.strategy in STRATEGIES, "train.strategy", f"{self.strategy!r} is not one of {STRATEGIES}")
        _check(self.backend in BACKENDS, "train.backend", f"{self.backend!r} is not one of {BACKENDS}")
        _check(self.threads is None or self.threads >= 1, "train.threads", f"must be >= 1 or null, got {self.threads}")
        _check(self.logger in LOGGERS, "train.logger", f"{self.logger!r} is not one of {LOGGERS}")
        for name in ("log_every", "val_batches", "keep_last"):
            _check(getattr(self, name) >= 1, f"train.{name}", f"must be >= 1, got {getattr(self, name)}")
        for name in ("val_every", "ckpt_every"):
            _check(getattr(self, name) >= 0, f"train.{name}", f"must be >= 0, got {getattr(self, name)}")


@dataclass
class DatasetConfig:
    """Which trajectory stores and episodes to train on, and how to read them."""

    path: Optional[str] = None  # one store
    paths: Optional[List[str]] = None  # several stores (multi-task); give path or paths
    val_fraction: float = 0.1  # held-out episodes per store, for the validation loss
    cache_features: str = "auto"  # auto: frozen vision encoder -> build/read the store's feature cache; on; off
    cache_batch_size: int = 64  # frames per encoder call while building the cache
    num_workers: int = 0  # DataLoader-style worker processes reading batches ahead
    tasks: Optional[List[str]] = None  # keep only episodes whose task id or instruction is listed
    episodes_per_task: Optional[int] = None  # few-shot: the first k training episodes of every task
    require_action: bool = False  # drop video-only episodes
    # task id or instruction -> k: its training windows are read k times per epoch (k >= 1, integer)
    oversample: Optional[Dict[str, int]] = None

    def __post_init__(self):
        _check(self.path is None or self.paths is None, "dataset.path",
               "give one store as dataset.path=<store> or several as dataset.paths=[<store>,...], not both")
        if self.path is not None:
            _check(isinstance(self.path, str) and bool(self.path), "dataset.path", f"empty store path {self.path!r}")
        elif self.paths is not None:
            _check(len(self.paths) > 0 and all(isinstance(p, str) and p for p in self.paths), "dataset.paths",
                   f"expected a non-empty list of store paths, got {self.paths!r}")
        _check(0 <= self.val_fraction < 1, "dataset.val_fraction", f"must be in [0, 1), got {self.val_fraction}")
        _check(self.cache_features in CACHE_MODES, "dataset.cache_features",
               f"{self.cache_features!r} is not one of {CACHE_MODES}")
        _check(self.cache_batch_size >= 1, "dataset.cache_batch_size", f"must be >= 1, got {self.cache_batch_size}")
        _check(self.num_workers >= 0, "dataset.num_workers", f"must be >= 0, got {self.num_workers}")
        _check(self.episodes_per_task is None or self.episodes_per_task >= 1, "dataset.episodes_per_task",
               f"must be >= 1 or null, got {self.episodes_per_task}")
        if self.oversample is not None:
            bad = {k: v for k, v in dict(self.oversample).items()
                   if isinstance(v, bool) or not isinstance(v, int) or v < 1}
            _check(not bad, "dataset.oversample", f"repeats must be integers >= 1 per task, got {bad}")

    @property
    def store_paths(self) -> list[str]:
        """The store paths as a list."""
        return [self.path] if self.path is not None else list(self.paths)


@dataclass
class TrainAppConfig:
    """The whole ``vlastack train`` config."""

    policy: Dict[str, Any] = field(default_factory=dict)
    dataset: DatasetConfig = field(default_factory=DatasetConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    run_dir: str = MISSING  # outputs: config.yaml, metrics.jsonl, tb/, checkpoints/
    resume: str = "auto"  # auto: continue run_dir/checkpoints/last when present; always: require it; never: start over
    progress: bool = True  # live progress bar

    def __post_init__(self):
        _check(self.resume in RESUME_MODES, "resume", f"{self.resume!r} is not one of {RESUME_MODES}")
        _check(isinstance(self.run_dir, str) and bool(self.run_dir), "run_dir", "required, e.g. run_dir=runs/my_run")
        _check(self.dataset.path is not None or self.dataset.paths is not None, "dataset.path",
               "required: one store as dataset.path=<store> or several as dataset.paths=[<store>,...]")
        name = self.policy.get("name")
        _check(isinstance(name, str) and bool(name), "policy.name",
               "required; choose a policy group, e.g. policy=dust (configs/policy/)")


# ---------------------------------------------------------------------------------- from Hydra


def _valid_keys(obj_type: Any) -> list[str]:
    if isinstance(obj_type, type) and dataclasses.is_dataclass(obj_type):
        return [f.name for f in dataclasses.fields(obj_type)]
    return []


def from_hydra(cfg: Any) -> TrainAppConfig:
    """Validate a composed Hydra config (DictConfig or dict) into a :class:`TrainAppConfig`.

    Unknown keys, wrong types and missing required values raise :class:`TrainConfigError`
    with the full key; range checks run in each section's ``__post_init__``.
    """
    from omegaconf import DictConfig, OmegaConf
    from omegaconf import errors as oe

    if not isinstance(cfg, DictConfig):
        cfg = OmegaConf.create(cfg)
    cfg = OmegaConf.masked_copy(cfg, [k for k in cfg.keys() if k != "hydra"]) if "hydra" in cfg else cfg
    try:
        schema = OmegaConf.structured(TrainAppConfig)
        merged = OmegaConf.merge(schema, cfg)
        OmegaConf.resolve(merged)
        missing = sorted(OmegaConf.missing_keys(merged))
        if missing:
            raise TrainConfigError(f"{missing[0]}: required (missing: {missing}); e.g. vlastack train "
                                   "dataset.path=data/demos.zarr run_dir=runs/my_run")
        obj = OmegaConf.to_object(merged)
    except TrainConfigError as e:
        raise TrainConfigError(str(e).splitlines()[0]) from None
    except oe.ConfigKeyError as e:
        key = getattr(e, "full_key", None) or str(e)
        valid = _valid_keys(getattr(e, "object_type", None))
        raise TrainConfigError(f"{key}: unknown key" + (f"; valid keys here: {valid}" if valid else "")) from None
    except oe.ValidationError as e:
        key = getattr(e, "full_key", None) or "?"
        msg = str(e).splitlines()[0]
        raise TrainConfigError(f"{key}: {msg}") from None
    except oe.OmegaConfBaseException as e:
        key = getattr(e, "full_key", None) or "?"
        raise TrainConfigError(f"{key}: {str(e).splitlines()[0]}") from None
    return obj


# ---------------------------------------------------------------------------------- policy fields


def _type_ok(value: Any, tp: Any) -> bool:
    """Whether a JSON-ish ``value`` fits annotation ``tp`` (int, float, str, bool, tuple, dict, Optional)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin in (typing.Union, getattr(__import__("types"), "UnionType", None)):
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is str:
        return isinstance(value, str)
    if origin in (tuple, list) or tp in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if not args:
            return True
        if len(args) == 2 and args[1] is Ellipsis:
            return all(_type_ok(v, args[0]) for v in value)
        if origin is tuple:
            return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
        return all(_type_ok(v, args[0]) for v in value)
    if origin is dict or tp is dict:
        return isinstance(value, dict)
    return True  # annotations we do not model are checked by the config's own __post_init__


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", None) if isinstance(tp, type) else str(tp).replace("typing.", "")


def check_policy_fields(config_class: type, fields: Dict[str, Any], section: str = "policy") -> None:
    """Raise :class:`TrainConfigError` for unknown fields or values of the wrong type."""
    hints = typing.get_type_hints(config_class)
    names = [f.name for f in dataclasses.fields(config_class)]
    for k, v in fields.items():
        if k not in names:
            raise TrainConfigError(f"{section}.{k}: unknown field of {config_class.__name__}; valid fields: "
                                   f"{sorted(names)}")
        if v is not None and not _type_ok(v, hints[k]):
            raise TrainConfigError(f"{section}.{k}: expected {_type_name(hints[k])}, got {v!r} "
                                   f"({type(v).__name__})")
