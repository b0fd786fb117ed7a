"""The training loop: dataset -> ``policy.compute_loss`` -> AdamW / schedule / EMA -> checkpoints.

One :class:`Trainer` serves one process or every rank of a ``torchrun`` launch:

- the step order is a pure function of (seed, step) (:class:`~vlastack.train.data.StepOrder`) and
  every micro-batch's noise is seeded by its global chunk id, so a resumed run replays exactly what an
  uninterrupted one does, and 2 ranks x 1 micro-batch equal 1 rank x 2 micro-batches;
- gradient accumulation (DDP / FSDP gradient sync only on the last micro-batch), clipping, bf16
  autocast on CUDA, EMA of the weights (checkpoints and validation use the EMA weights);
- validation loss on held-out episodes every ``val_every`` steps (a fixed set of batches);
- checkpoints every ``ckpt_every`` steps and at the end (:mod:`~vlastack.train.checkpoint`);
- TensorBoard scalars (``run_dir/tb``), ``metrics.jsonl``, a rich progress bar (loss, samples/s, ETA);
- a wall-clock budget (``train.max_minutes``): the cosine schedule is re-planned to end on time.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import logging
import math
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch

from vlastack.policies.base import Policy, policy_class
from vlastack.policies.checkpoint import read_meta
from vlastack.types import ACTION

from . import checkpoint as ck
from . import data as D
from . import distributed as dd
from .builder import build_policy, data_fields
from .config import TrainAppConfig, TrainConfigError, resolve_optim
from .optim import EMA, CosineSchedule, make_optimizer

log = logging.getLogger("vlastack.train")

_SEED_MULT = 1_000_003


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    if device.type == "cpu":
        return dict(batch)
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


@contextlib.contextmanager
def _cache_threads(info: dd.DistInfo, threads: int | None):
    """While rank 0 alone encodes the feature cache on the CPU, it takes the threads of every local rank
    (the others wait for it): ``threads`` x local ranks, at most the cores this process may use."""
    if info.device.type != "cpu" or threads is None or info.world <= 1:
        yield
        return
    local = int(os.environ.get("LOCAL_WORLD_SIZE", info.world))
    before = torch.get_num_threads()
    torch.set_num_threads(max(1, min(threads * local, dd.usable_cores())))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (avx512_bf16 or AMX), where CPU autocast pays."""
    cpu = getattr(torch, "cpu", None)
    checks = [getattr(cpu, n, None) for n in ("_is_avx512_bf16_supported", "_is_amx_tile_supported")]
    return any(bool(c()) for c in checks if c is not None)


class _Log:
    """Rank-0 outputs: TensorBoard and/or Weights & Biases, metrics.jsonl, the progress bar and plain lines."""

    def __init__(self, run_dir: Path, enabled: bool, progress: bool, total: int, start: int,
                 logger: str = "tensorboard", wandb_cfg: Any = None, config: Mapping[str, Any] | None = None):
        self.enabled = enabled
        self.tb = None
        self.wandb = None
        self.jsonl = None
        self.bar = None
        self.task = None
        self._last_print = 0.0
        if not enabled:
            return
        self.jsonl = open(run_dir / "metrics.jsonl", "a")
        if logger in ("tensorboard", "both"):
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(str(run_dir / "tb"))
            except ImportError as e:  # pragma: no cover - tensorboard is a dependency
                log.warning("TensorBoard logging off (%s)", e)
        if logger in ("wandb", "both"):
            self.wandb = start_wandb(run_dir, wandb_cfg, dict(config or {}))
        from rich.console import Console

        self.console = Console()
        self.live = progress and self.console.is_terminal
        if self.live:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)

            self.bar = Progress(TextColumn("[bold]train"), BarColumn(), MofNCompleteColumn(),
                                TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[speed]} samples/s"),
                                TextColumn("{task.fields[note]}"), TimeElapsedColumn(), TextColumn("ETA"),
                                TimeRemainingColumn(), console=self.console)
            self.bar.start()
            self.task = self.bar.add_task("train", total=total, completed=start, loss="-", speed="-", note="")

    def scalars(self, step: int, values: Mapping[str, float], prefix: str) -> None:
        """TensorBoard + metrics.jsonl."""
        if not self.enabled:
            return
        finite = {f"{prefix}/{k}": v for k, v in values.items() if isinstance(v, (int, float)) and math.isfinite(v)}
        if self.tb is not None:
            for k, v in finite.items():
                self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log({"step": step, **finite})
        self.jsonl.write(json.dumps({"step": step, "split": prefix, **values}) + "\n")
        self.jsonl.flush()

    def progress(self, step: int, total: int, loss: float, speed: float, note: str = "", force: bool = False) -> None:
        """Move the bar (or print a plain line at most every 10 s without a terminal)."""
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.update(self.task, completed=step, total=total, loss=f"{loss:.4f}", speed=f"{speed:.1f}",
                            note=note)
        elif force or time.monotonic() - self._last_print > 10.0:
            self._last_print = time.monotonic()
            print(f"step {step}/{total} loss {loss:.4f} {speed:.1f} samples/s {note}".rstrip(), flush=True)

    def close(self) -> None:
        """Flush and close everything."""
        if self.bar is not None:
            self.bar.stop()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.jsonl is not None:
            self.jsonl.close()


def check_logger(logger: str) -> None:
    """Refuse ``train.logger`` values whose package is missing, before any work starts."""
    if logger in ("wandb", "both") and importlib.util.find_spec("wandb") is None:
        raise TrainConfigError(f"train.logger: {logger!r} needs the wandb package; pip install 'vlastack[wandb]' "
                               "or use train.logger=tensorboard")


def start_wandb(run_dir: Path, cfg: Any, config: Mapping[str, Any]) -> Any:
    """A wandb run for ``run_dir`` (resumed under the same id when the run directory is resumed).

    Metrics are logged against their own ``step`` key, so a run resumed from an earlier checkpoint
    than the last logged step still records its steps.
    """
    import secrets

    import wandb

    id_file = run_dir / "wandb_id"
    run_id = id_file.read_text().strip() if id_file.is_file() else secrets.token_hex(4)
    id_file.write_text(run_id + "\n")
    run = wandb.init(project=cfg.project, entity=cfg.entity, name=cfg.name or run_dir.resolve().name,
                     tags=list(cfg.tags), mode=cfg.mode, dir=str(run_dir), id=run_id, resume="allow", config=config)
    run.define_metric("step")
    run.define_metric("*", step_metric="step")
    return run


class Trainer:
    """Set up a run from a :class:`TrainAppConfig` and train it (:meth:`run`)."""

    def __init__(self, app: TrainAppConfig):
        check_logger(app.train.logger)
        try:
            defaults = policy_class(app.policy.get("name")).config_class.OPTIM_DEFAULTS
        except ValueError as e:
            raise TrainConfigError(f"policy.name: {e}") from None
        # null optimiser / warmup values take the policy's published ones (train.* settings win)
        app.train = resolve_optim(app.train, defaults)
        self.app = app
        self.cfg = app.train
        self.info = dd.setup(self.cfg.device, self.cfg.backend)
        self.run_dir = Path(app.run_dir)
        self.ckpt_root = self.run_dir / "checkpoints"
        self.log = None

    # ------------------------------------------------------------------ set-up

    def _config_dict(self) -> dict[str, Any]:
        """The resolved run config as plain containers (what wandb records)."""
        from omegaconf import OmegaConf

        return OmegaConf.to_container(OmegaConf.structured(self.app))

    def _say(self, msg: str, level: int = logging.INFO) -> None:
        """Log ``msg`` on rank 0 (stderr and run_dir/train.log under the command)."""
        if self.info.is_main:
            log.log(level, msg)

    def _precision(self) -> torch.dtype | None:
        p, kind = self.cfg.precision, self.info.device.type
        native = kind == "cuda" or (kind == "cpu" and _cpu_has_bf16())  # bf16 computed natively
        if p == "bf16" and not native:
            self._say(f"train.precision=bf16 on a {kind} without native bfloat16 (avx512_bf16 / AMX): autocast "
                      "runs, but emulated and slower than fp32", logging.WARNING)
        if p == "bf16" or (p == "auto" and kind == "cuda") or (p == "native_bf16" and native):
            return torch.bfloat16
        return None

    def _resume_dir(self) -> Path | None:
        mode = self.app.resume
        last = ck.resume_dir(self.ckpt_root, log=lambda m: self._say(m, logging.WARNING)) if mode != "never" else None
        if mode == "always" and last is None:
            raise TrainConfigError(f"resume: 'always' but {self.ckpt_root}/last is missing; run with resume=auto")
        return last

    def setup(self) -> None:
        """Open the data, build (or restore) the policy, optimizer, EMA, schedule and outputs."""
        app, cfg, info = self.app, self.cfg, self.info
        if cfg.threads is not None:
            # on a shared CPU, one thread per process avoids OpenMP threads spinning against other work
            torch.set_num_threads(cfg.threads)
        self.autocast_dtype = self._precision()
        if info.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            removed = ck.clean_temporaries(self.ckpt_root)
            if removed:
                log.warning("removed leftovers of an interrupted save: %s", removed)
            from omegaconf import OmegaConf

            (self.run_dir / "config.yaml").write_text(OmegaConf.to_yaml(OmegaConf.structured(app)))
        dd.barrier(info)
        stores = D.open_stores(app.dataset)
        weights = [s.num_frames for s in stores]
        stats = D.merge_stats([D.store_stats(s) for s in stores], weights)
        fields = data_fields(stores[0].spec)
        resume_dir = self._resume_dir()
        self.state = ck.load_state(resume_dir) if resume_dir is not None else None
        torch.manual_seed(cfg.seed)
        if self.state is not None:
            policy = self._restore_policy(resume_dir)
            fresh: list[str] = []
        else:
            policy, fresh = build_policy(app.policy, fields, stats, cfg.init_from)
        self.policy: Policy = policy.to(info.device)
        window = policy.config.delta_indices()
        D.check_compatible(stores, list(window))
        # feature cache: rank 0 builds what is missing, every rank then reads it
        image_keys = [k for k in window if k in stores[0].spec.image_keys]
        encoder = getattr(policy, "vision", None)
        mode = app.dataset.cache_features
        if info.is_main:
            with _cache_threads(info, cfg.threads):
                name = D.ensure_feature_cache(stores, encoder, image_keys, mode, app.dataset.cache_batch_size,
                                              build=True, progress=app.progress, log=self._say)
        else:
            name = None
        name = dd.broadcast_object(info, name)
        if name is not None:
            stores = D.reopen(stores)
        self.train_s, self.val_s, (n_tr, n_va) = D.build_samplers(stores, app.dataset, window, cfg.seed, name)
        has_actions = any(s.has_action[s.episodes].any() and ACTION in s.deltas for s in self.train_s.samplers)
        if not has_actions and not getattr(getattr(policy, "strategy", None), "world_model", False):
            raise TrainConfigError(f"dataset: no training episode has actions, and policy {policy.name!r} "
                                   f"({getattr(policy.config, 'strategy', '')}) learns only from actions; "
                                   "action-free (video) training needs DUST's world-model stream")
        self.feature_encoder = name
        self.data_info = {"paths": list(app.dataset.store_paths), "train_episodes": int(n_tr),
                          "val_episodes": int(n_va), "fps": float(stores[0].spec.fps)}
        self.order = D.StepOrder(len(self.train_s), cfg.batch_size, cfg.seed, info.world, cfg.grad_accum,
                                 index_map=D.oversample_map(self.train_s, app.dataset.oversample))
        self.batches = D.StepBatches(self.train_s, self.order, info.rank)
        micro = self.order.micro
        self.val_sets = D.val_batches(self.val_s, cfg.val_batches, micro, cfg.seed)
        # model, optimizer, EMA, schedule
        self.module = dd.wrap(policy, info, cfg.strategy, find_unused=False)
        self.fsdp = dd.is_fsdp(self.module)
        self.optimizer = make_optimizer(policy, cfg.optim)
        self.ema = EMA(policy, cfg.ema) if cfg.ema.enabled else None
        self.schedule = CosineSchedule(cfg.schedule, cfg.optim.lr, cfg.steps)
        self.trainable = [p for p in policy.parameters() if p.requires_grad]
        self.step, self.elapsed_before, self.best_val, self.best_step = 0, 0.0, math.inf, None
        if self.state is not None:
            self._restore_state(self.state)
        self.state = None  # free memory
        n_params = sum(p.numel() for p in self.trainable)
        self.log = _Log(self.run_dir, info.is_main, app.progress, self.schedule.total_steps, self.step,
                        cfg.logger, cfg.wandb, self._config_dict())
        self._say(f"{policy.name} ({n_params / 1e6:.2f}M trainable) on {info.device} x{info.world}"
                  f"{' (FSDP)' if self.fsdp else ''}; {len(self.train_s)} train windows from {n_tr} episodes"
                  + (f" ({self.order.n} reads per epoch with dataset.oversample={dict(app.dataset.oversample)})"
                     if self.order.index_map is not None else "") + ", "
                  f"{len(self.val_s) if self.val_s else 0} val windows from {n_va}; "
                  f"{'cached ' + name + ' features' if name else 'images'}; batch {cfg.batch_size} = "
                  f"{info.world} ranks x {cfg.grad_accum} x {micro}"
                  + (f"; resumed at step {self.step}" if resume_dir is not None else "")
                  + (f"; fine-tuning from {cfg.init_from} (fresh: {fresh[:6]}{'...' if len(fresh) > 6 else ''})"
                     if cfg.init_from and resume_dir is None else ""))

    def _restore_policy(self, ckpt_dir: Path) -> Policy:
        """The policy of a resumed run: its config from the checkpoint, raw weights from the state."""
        meta = read_meta(ckpt_dir)
        if meta.type != self.app.policy.get("name"):
            raise TrainConfigError(f"resume: {ckpt_dir} trained a {meta.type!r} policy, this config asks for "
                                   f"{self.app.policy.get('name')!r}; use a new run_dir or resume=never")
        cls = policy_class(meta.type)
        policy = cls(cls.config_class.from_dict(meta.config))
        policy.preset = meta.preset
        missing, unexpected = policy.load_state_dict(self.state["model"], strict=False)
        frozen = tuple(p + "." for p in policy.frozen_modules())
        missing = [k for k in missing if not k.startswith(frozen)]
        if missing or unexpected:
            raise ValueError(f"resume: {ckpt_dir}: training state does not match the policy (missing {missing[:6]}, "
                             f"unexpected {unexpected[:6]})")
        return policy

    def _restore_state(self, st: dict[str, Any]) -> None:
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, set_optimizer_state_dict

            set_optimizer_state_dict(self.module, self.optimizer, optim_state_dict=st["optimizer"],
                                     options=StateDictOptions(full_state_dict=True))
        else:
            self.optimizer.load_state_dict(st["optimizer"])
        self.schedule.load_state_dict(st["schedule"])
        # the config decides the run's length (train.steps may be raised to extend a finished run); a
        # wall-clock plan is kept as re-planned, within train.steps
        self.schedule.replan(self.cfg.steps if self.cfg.max_minutes is None
                             else min(self.schedule.total_steps, self.cfg.steps))
        if self.ema is not None and st.get("ema") is not None:
            if self.fsdp:
                from torch.distributed.tensor import distribute_tensor

                sh = st["ema"]["shadow"]
                for n, s in zip(self.ema.names, self.ema.shadow):
                    s.copy_(distribute_tensor(sh[n].to(s.dtype), s.device_mesh, s.placements)
                            if hasattr(s, "device_mesh") else sh[n])
                self.ema.updates = int(st["ema"]["updates"])
            else:
                self.ema.load_state_dict(st["ema"])
        ck.set_rng_state(st["rng"])
        self.step = int(st["step"])
        self.elapsed_before = float(st.get("elapsed_s", 0.0))
        self.best_val = float(st.get("best_val", math.inf))
        self.best_step = st.get("best_step")
        data = st.get("data", {})
        if data.get("batch_size") not in (None, self.cfg.batch_size) or data.get("seed") not in (None, self.cfg.seed):
            self._say(f"resuming with batch_size/seed {self.cfg.batch_size}/{self.cfg.seed}, the checkpoint used "
                      f"{data.get('batch_size')}/{data.get('seed')}: the data order changes", logging.WARNING)
        over = dict(self.app.dataset.oversample or {})
        if ("oversample" in data and data["oversample"] != over) or \
                data.get("reads_per_epoch") not in (None, self.order.n):
            self._say(f"resuming with dataset.oversample={over} ({self.order.n} reads per epoch), the checkpoint "
                      f"used {data.get('oversample')} ({data.get('reads_per_epoch')}): the data order changes",
                      logging.WARNING)

    # ------------------------------------------------------------------ pieces of a step

    def _autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.info.device.type, dtype=self.autocast_dtype)

    def _seed_chunk(self, chunk_id: int, salt: int = 0) -> None:
        torch.manual_seed((self.cfg.seed * _SEED_MULT + chunk_id * 2 + salt) % (2 ** 63 - 1))

    def train_step(self, micro_batches: list[dict[str, Any]]) -> dict[str, float]:
        """One optimizer step over this rank's micro-batches; returns averaged metrics (this rank)."""
        cfg, info = self.cfg, self.info
        lr = self.schedule.apply(self.optimizer, self.step)
        self.module.train()
        acc: dict[str, float] = {}
        n = len(micro_batches)
        for m, mb in enumerate(micro_batches):
            mb = _to_device(mb, info.device)
            self._seed_chunk(self.order.chunk_id(self.step, info.rank, m))
            with dd.no_sync(self.module, m < n - 1), self._autocast():
                loss, metrics = self.module(mb)
                if not torch.isfinite(loss):
                    raise FloatingPointError(f"train: loss is {float(loss)} at step {self.step} (metrics {metrics}); "
                                             "lower train.optim.lr or check the data's statistics")
                (loss / n).backward()
            for k, v in metrics.items():
                acc[k] = acc.get(k, 0.0) + float(v) / n
        if cfg.optim.grad_clip:
            gn = torch.nn.utils.clip_grad_norm_(self.trainable, cfg.optim.grad_clip)
            acc["grad_norm"] = float(dd.full_tensor(gn) if hasattr(gn, "full_tensor") else gn)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        if self.ema is not None:
            self.ema.update(self.policy)
        acc["lr"] = lr
        self.step += 1
        return acc

    @torch.no_grad()
    def validate(self) -> float | None:
        """Mean validation loss of the EMA weights over the fixed validation batches (None without any)."""
        if not self.val_sets:
            return None
        info = self.info
        self.module.eval()
        per_rank = math.ceil(len(self.val_sets) / info.world)
        total = count = 0.0
        ctx = self.ema.applied(self.policy) if self.ema is not None else contextlib.nullcontext()
        with ctx:
            for k in range(per_rank):
                i = info.rank + k * info.world
                weight = 1.0 if i < len(self.val_sets) else 0.0  # FSDP: every rank runs the same number
                ix = self.val_sets[i if weight else 0]
                mb = _to_device(D.batch_to_torch(self.val_s.get_batch(ix)), info.device)
                self._seed_chunk(i, salt=1)
                with self._autocast():
                    loss, _ = self.module(mb)
                total += weight * float(loss) * len(ix)
                count += weight * len(ix)
        total, count = dd.all_reduce_sum(info, [total, count])
        self.module.train()
        return total / max(count, 1.0)

    def save(self, val_loss: float | None) -> Path | None:
        """Write a checkpoint of the current step (collective under FSDP; rank 0 writes)."""
        info, policy = self.info, self.policy
        is_best = val_loss is not None and val_loss <= self.best_val
        if is_best:
            self.best_val, self.best_step = float(val_loss), self.step
        frozen = tuple(p + "." for p in policy.frozen_modules())
        if self.fsdp:
            from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

            model = {k: v for k, v in dd.full_state_dict(policy).items() if not k.startswith(frozen)}
            optim = get_optimizer_state_dict(self.module, self.optimizer,
                                             options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            ema = None if self.ema is None else {
                "updates": self.ema.updates,
                "shadow": {n: dd.full_tensor(s).detach().cpu() for n, s in zip(self.ema.names, self.ema.shadow)}}
        else:
            model = {k: v.detach().cpu() for k, v in policy.state_dict().items() if not k.startswith(frozen)}
            optim = self.optimizer.state_dict() if info.is_main else None
            ema = self.ema.state_dict() if self.ema is not None else None
        out = None
        if info.is_main:
            state = {"step": self.step, "model": model, "optimizer": optim, "schedule": self.schedule.state_dict(),
                     "ema": ema, "rng": ck.rng_state(), "elapsed_s": self.elapsed(),
                     "best_val": self.best_val, "best_step": self.best_step,
                     "data": {"seed": self.cfg.seed, "batch_size": self.cfg.batch_size, "step": self.step,
                              "epoch": self.order.epoch_of(self.step), "world": info.world,
                              "grad_accum": self.cfg.grad_accum, "reads_per_epoch": self.order.n,
                              "oversample": dict(self.app.dataset.oversample or {})}}
            extra = {"training": {"step": self.step, "val_loss": val_loss, "ema": self.ema is not None,
                                  "run_dir": str(self.run_dir), "feature_encoder": self.feature_encoder,
                                  "preset": self.app.policy.get("preset"), "data": self.data_info,
                                  "init_from": self.cfg.init_from}}
            out = ck.save_checkpoint(self.ckpt_root, self.step, lambda d: self._write_policy(d, model, ema, extra),
                                     state, self.cfg.keep_last, is_best)
        dd.barrier(info)
        return out

    def _write_policy(self, d: Path, model: dict, ema: dict | None, extra: dict) -> None:
        """The loadable policy directory: EMA weights when EMA is on."""
        if not self.fsdp:
            ctx = self.ema.applied(self.policy) if self.ema is not None else contextlib.nullcontext()
            with ctx:
                self.policy.save_pretrained(d, extra=extra)
            return
        # FSDP: a CPU replica of the policy takes the gathered weights
        if getattr(self, "_export", None) is None:
            self._export = type(self.policy)(self.policy.config)
        state = dict(model)
        if ema is not None:
            state.update(ema["shadow"])
        self._export.load_state_dict(state, strict=False)
        self._export.save_pretrained(d, extra=extra)

    def elapsed(self) -> float:
        """Seconds of training so far, over every invocation of this run."""
        return self.elapsed_before + (time.monotonic() - self.t0)

    def _sim_eval(self, ckpt: Path) -> None:
        """Evaluate a checkpoint in simulation with ``vlastack eval`` (rank 0; a failure is logged, not fatal)."""
        out = self.run_dir / "sim_eval" / ckpt.name
        out.parent.mkdir(parents=True, exist_ok=True)  # (vlastack eval wants out's parent to exist)
        cmd = [sys.executable, "-m", "vlastack.cli", "eval", f"checkpoint={ckpt}", f"out={out}",
               *self.cfg.sim_eval.overrides]
        self._say(f"sim eval at step {self.step}: {' '.join(cmd[2:])}")
        from vlastack.rollout.evaluate import INFO_FILE, overall_success

        rc = subprocess.run(cmd, capture_output=True, text=True)
        rates = {}
        info_file = out / INFO_FILE
        if info_file.is_file():
            try:
                o = overall_success(json.loads(info_file.read_text()))
                rates = {k: float(o[k]) for k in ("success_rate", "ci_low", "ci_high", "episodes")}
                self._say(f"sim eval at step {self.step}: success {o['successes']}/{o['episodes']} "
                          f"({o['success_rate']:.0%}, 95% CI {o['ci_low']:.0%}-{o['ci_high']:.0%})")
            except (KeyError, ValueError) as e:
                self._say(f"sim eval: cannot read {info_file}: {e}", logging.WARNING)
        self.log.scalars(self.step, {"exit_code": float(rc.returncode), **rates}, "sim_eval")
        if rc.returncode:
            self._say(f"sim eval failed (exit {rc.returncode}): {rc.stderr.strip()[-500:]}", logging.WARNING)

    # ------------------------------------------------------------------ the loop

    def run(self) -> dict[str, Any]:
        """Train to the end (or the budget / ``stop_after_steps``); returns a summary."""
        self.t0 = time.monotonic()
        try:
            self.setup()
            return self._loop()
        finally:
            if self.log is not None:
                self.log.close()
            dd.teardown(self.info)

    def _loop(self) -> dict[str, Any]:
        cfg, info = self.cfg, self.info
        budget = cfg.max_minutes * 60.0 if cfg.max_minutes else None
        start, t_start = self.step, time.monotonic()
        limit = math.inf if cfg.stop_after_steps is None else start + cfg.stop_after_steps

        def end() -> int:
            return int(min(self.schedule.total_steps, limit))

        last_ckpt = last_val = None
        val_loss = loss_ema = None
        tput_t, tput_step, speed = time.monotonic(), self.step, 0.0
        steady = None  # (time, step) after the first step of this invocation (excludes warm-up)
        metrics: dict[str, float] = {}
        ended_by = "steps"
        it = D.step_batches(self.batches, self.step, cfg.steps, self.app.dataset.num_workers)
        while self.step < end():
            metrics = self.train_step(next(it))
            if steady is None:
                steady = (time.monotonic(), self.step)
            step = self.step
            loss = metrics.get("loss", float("nan"))
            loss_ema = loss if loss_ema is None else 0.9 * loss_ema + 0.1 * loss
            if step % cfg.log_every == 0 or step == end():
                metrics = dd.all_reduce_mean(info, metrics)
                now = time.monotonic()
                speed = cfg.batch_size * (step - tput_step) / max(now - tput_t, 1e-9)
                tput_t, tput_step = now, step
                metrics.update(samples_per_s=speed, epoch=self.order.epoch_of(step))
                self.log.scalars(step, metrics, "train")
                if budget is not None and self._budget(budget, start, t_start):
                    ended_by = "max_minutes"
                    break
                self.log.progress(step, self.schedule.total_steps, loss_ema, speed)
            if cfg.val_every and step % cfg.val_every == 0 and step < end():
                val_loss, last_val = self.validate(), step
                if val_loss is not None:
                    best = val_loss <= self.best_val
                    self.log.scalars(step, {"loss": val_loss}, "val")
                    self._say(f"step {step}: val loss {val_loss:.4f}" + (" (best)" if best else ""))
                    if best and (not cfg.ckpt_every or step % cfg.ckpt_every):
                        self.save(val_loss)  # keep the best weights even between checkpoint steps
                        last_ckpt = step
            if cfg.ckpt_every and step % cfg.ckpt_every == 0 and step < end() and last_ckpt != step:
                ck_dir = self.save(val_loss if last_val == step else None)
                last_ckpt = step
                if cfg.sim_eval.every and step % cfg.sim_eval.every == 0:
                    if info.is_main and ck_dir is not None:
                        self._sim_eval(ck_dir)
                    dd.barrier(info)
        if ended_by == "steps" and self.step < self.schedule.total_steps:
            ended_by = "stop_after_steps"
        # the end: validation and a checkpoint of the final step
        if last_val != self.step:
            val_loss = self.validate()
            if val_loss is not None:
                self.log.scalars(self.step, {"loss": val_loss}, "val")
        ck_dir = self.save(val_loss) if last_ckpt != self.step else ck.read_pointer(self.ckpt_root, "last")
        t_end = time.monotonic()
        steady_speed = (cfg.batch_size * (self.step - steady[1]) / max(t_end - steady[0], 1e-9)
                        if steady and self.step > steady[1] else speed)
        summary = {"step": self.step, "total_steps": self.schedule.total_steps, "ended_by": ended_by,
                   "train_loss": metrics.get("loss"), "val_loss": val_loss,
                   "best_val_loss": None if math.isinf(self.best_val) else self.best_val, "best_step": self.best_step,
                   "samples_per_s": steady_speed, "elapsed_s": self.elapsed(),
                   "checkpoint": str(self.ckpt_root / "last"), "checkpoint_dir": str(ck_dir) if ck_dir else None,
                   "feature_encoder": self.feature_encoder, "world_size": info.world}
        if info.is_main:
            if loss_ema is not None:  # a resumed run with nothing left to train has no loss or speed to show
                self.log.progress(self.step, self.schedule.total_steps, loss_ema, steady_speed, force=True)
            from vlastack.rollout.common import write_json_atomic

            write_json_atomic(self.run_dir / "summary.json", summary)
            vl = f"{val_loss:.4f}" if val_loss is not None else "-"
            self._say(f"done at step {self.step}/{self.schedule.total_steps} ({ended_by}); val loss {vl}; "
                      f"{steady_speed:.1f} samples/s (steady); {self.elapsed() / 60:.1f} min; checkpoint {ck_dir}")
        return summary

    def _budget(self, budget_s: float, start: int, t_start: float) -> bool:
        """Wall-clock budget: re-plan the schedule's length to end on time; True when the budget is spent.

        Rank 0 decides (its clock) and every rank follows.
        """
        decision = None
        if self.info.is_main:
            used = self.elapsed()
            done = self.step - start
            rate = done / max(time.monotonic() - t_start, 1e-9)  # steps/s, checkpoints and validation included
            planned = self.step + int(max(budget_s - used, 0.0) * rate * 0.97)
            decision = (used >= budget_s, min(self.cfg.steps, max(planned, self.step)), done >= 10)
        over, planned, settled = dd.broadcast_object(self.info, decision)
        if settled or over:
            self.schedule.replan(planned)
        return over


def train(app: TrainAppConfig) -> dict[str, Any]:
    """Train a run described by ``app`` (see :class:`~vlastack.train.config.TrainAppConfig`); returns its summary."""
    return Trainer(app).run()


def policy_parameters(policy: Policy) -> np.ndarray:
    """Every trainable parameter of a policy flattened into one float64 vector (tests, comparisons)."""
    return np.concatenate([p.detach().cpu().double().numpy().ravel()
                           for p in policy.parameters() if p.requires_grad])


__all__ = ["Trainer", "train", "policy_parameters"]
