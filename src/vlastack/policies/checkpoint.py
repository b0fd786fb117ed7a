"""Policy checkpoints as people share them: one layout, one reader, one weight loader, the Hub.

A checkpoint is a directory, the same on disk and in a Hugging Face Hub model repo::

    config.json         flat: {"type": "dust", <every config field>, "vlastack": {...}}
    model.safetensors   trainable weights and buffers (normalisation statistics included)
    README.md           model card: policy, preset, data, training steps, evaluation results
    eval_info.json      optional: a ``vlastack eval`` result, summarised in the card

``config.json`` holds the policy name under ``type`` and the config dataclass's fields beside it
(as LeRobot's and transformers' configs do), plus one ``vlastack`` block: the format version,
fingerprints of frozen encoders (rebuilt from the config, not stored, unless ``includes_frozen``),
the preset, the parameter count and what training recorded (steps, data, validation loss).
A config.json written by a host framework (the ``lerobot_policy_dust`` / ``lerobot_policy_dita``
plugins: LeRobot's own fields flat beside ours) carries the policy's config in the block's
``config``, which then wins over the flat fields.
Format 1 (``{"policy", "format": 1, "config": {...}, ...}``, written by earlier versions) is still
read; saving it again (``Policy.from_pretrained(old).save_pretrained(new)``) writes format 2.

:func:`locate` turns a local path (a checkpoint directory, a ``last`` pointer, a training run) or a
Hub repo id (``org/name``, at an optional ``revision``) into a local directory; repo ids go
through ``huggingface_hub.snapshot_download`` and so its cache (``HF_HUB_CACHE``), ``revision``
and offline mode (``HF_HUB_OFFLINE=1``: the cache only). :func:`load_weights` is the one place
weights go from a checkpoint into a policy: exactly (loading a saved policy) or every tensor whose
name and shape match (fine-tuning). :func:`push` uploads a checkpoint with ``HfApi``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Mapping, Sequence

FORMAT = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
CARD_FILE = "README.md"
EVAL_FILE = "eval_info.json"
HUB_FILES = (CONFIG_FILE, WEIGHTS_FILE, CARD_FILE, EVAL_FILE)
META_KEY = "vlastack"  # the block of config.json that is not a config field
_REPO_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]*[A-Za-z0-9_]")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read or does not fit the policy; the message says what to do."""


# ---------------------------------------------------------------- where a checkpoint lives


def resolve_checkpoint(path: str | os.PathLike) -> str:
    """The local checkpoint directory (``config.json`` + ``model.safetensors``) that ``path`` designates.

    Accepts the directory itself, a ``last`` pointer (a symlink, or a text file holding a
    directory name relative to its own folder or absolute), a folder holding ``last``, or a
    training run directory holding ``checkpoints/``.
    """
    p = os.fspath(path)
    seen: list[str] = []
    for _ in range(8):
        seen.append(p)
        if os.path.isdir(p):
            if os.path.isfile(os.path.join(p, CONFIG_FILE)) and os.path.isfile(os.path.join(p, WEIGHTS_FILE)):
                return os.path.realpath(p)
            if os.path.lexists(os.path.join(p, "last")):
                p = os.path.join(p, "last")
                continue
            if os.path.isdir(os.path.join(p, "checkpoints")):
                p = os.path.join(p, "checkpoints")
                continue
            break
        if os.path.isfile(p):  # a pointer file
            try:
                target = open(p).read().strip()
            except (OSError, UnicodeDecodeError):
                break
            if not target or "\n" in target:
                break
            p = target if os.path.isabs(target) else os.path.join(os.path.dirname(p), target)
            continue
        break
    raise FileNotFoundError(f"checkpoint: {os.fspath(path)!r} is not a policy checkpoint (a directory with "
                            f"{CONFIG_FILE} and {WEIGHTS_FILE}, a 'last' pointer, or a run directory with "
                            f"checkpoints/); looked at {seen}")


def is_repo_id(source: str | os.PathLike) -> bool:
    """Whether ``source`` reads as a Hub repo id (``org/name``) rather than a path."""
    s = os.fspath(source)
    return bool(_REPO_ID.fullmatch(s)) and ".." not in s and not s.startswith(".")


def locate(source: str | os.PathLike, revision: str | None = None, cache_dir: str | os.PathLike | None = None,
           local_files_only: bool = False, token: str | bool | None = None) -> Path:
    """The local directory of checkpoint ``source``: an existing path, else a Hub repo id.

    A repo id is fetched with ``huggingface_hub.snapshot_download`` (only the checkpoint files),
    honouring its cache (``cache_dir`` or ``HF_HUB_CACHE``), ``revision`` (branch, tag or commit)
    and offline mode (``HF_HUB_OFFLINE=1`` or ``local_files_only``: the cache only).
    """
    s = os.fspath(source)
    if os.path.exists(s) or not is_repo_id(s):
        if revision is not None:
            raise CheckpointError(f"checkpoint {s!r}: revision={revision!r} applies to Hub repo ids (org/name); "
                                  "this is a local path")
        return Path(resolve_checkpoint(s))
    try:
        from huggingface_hub import constants, snapshot_download
    except ImportError:  # pragma: no cover - a dependency
        raise CheckpointError(f"checkpoint {s!r}: not a local path; loading Hub repo ids needs huggingface_hub "
                              "(pip install huggingface_hub)") from None
    try:
        d = snapshot_download(s, revision=revision, cache_dir=cache_dir, local_files_only=local_files_only,
                              allow_patterns=list(HUB_FILES), token=token, library_name="vlastack")
    except Exception as e:  # noqa: BLE001 - the hub raises many kinds; all mean "not available"
        offline = constants.HF_HUB_OFFLINE or local_files_only
        where = cache_dir or constants.HF_HUB_CACHE
        why = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        hint = (f"offline (HF_HUB_OFFLINE=1 or local_files_only): only the cache {where} is read; download it "
                "once online or unset HF_HUB_OFFLINE" if offline else "check the repo id, revision and token")
        raise FileNotFoundError(f"checkpoint {s!r}: no such local path, and Hub repo {s!r}"
                                f"{'@' + revision if revision else ''} could not be fetched ({type(e).__name__}: "
                                f"{why}); {hint}") from None
    try:
        return Path(resolve_checkpoint(d))
    except FileNotFoundError:
        raise FileNotFoundError(f"checkpoint {s!r}: Hub repo has no {CONFIG_FILE} + {WEIGHTS_FILE} "
                                f"(fetched into {d}); is it a vlastack policy?") from None


# ---------------------------------------------------------------- config.json


@dataclasses.dataclass
class CheckpointMeta:
    """What ``config.json`` says: policy ``type``, its ``config`` fields and the ``vlastack`` block."""

    type: str
    config: dict[str, Any]
    frozen_modules: dict[str, str] = dataclasses.field(default_factory=dict)
    includes_frozen: bool = False
    info: dict[str, Any] = dataclasses.field(default_factory=dict)  # preset, parameters, training, ...

    @property
    def training(self) -> dict[str, Any]:
        """What the training loop recorded (step, val_loss, ema, data, preset), or {}."""
        return dict(self.info.get("training") or {})

    @property
    def preset(self) -> str | None:
        """The preset the config came from, when recorded."""
        return self.training.get("preset") or self.info.get("preset")

    def to_json(self) -> dict[str, Any]:
        """The flat ``config.json`` document (format 2)."""
        clash = sorted({"type", META_KEY} & set(self.config))
        if clash:
            raise CheckpointError(f"policy {self.type!r}: config fields {clash} clash with config.json's own keys")
        block = {"format": FORMAT, "frozen_modules": dict(self.frozen_modules),
                 "includes_frozen": bool(self.includes_frozen), **self.info}
        return {"type": self.type, **self.config, META_KEY: block}

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], where: str = CONFIG_FILE) -> "CheckpointMeta":
        """Parse format 2 (flat, ``type``) or format 1 (``policy`` + nested ``config``)."""
        if not isinstance(doc, Mapping):
            raise CheckpointError(f"{where}: expected a JSON object, got {type(doc).__name__}")
        if "type" in doc:
            block = dict(doc.get(META_KEY) or {})
            fmt = block.pop("format", FORMAT)
            if not isinstance(fmt, int) or fmt > FORMAT:
                raise CheckpointError(f"{where}: checkpoint format {fmt!r} is newer than this vlastack reads "
                                      f"({FORMAT}); upgrade vlastack")
            config = block.pop("config", None)
            if config is None:
                config = {k: v for k, v in doc.items() if k not in ("type", META_KEY)}
            elif not isinstance(config, Mapping):
                raise CheckpointError(f"{where}: the {META_KEY!r} block's 'config' must be a JSON object, "
                                      f"got {type(config).__name__}")
            return cls(str(doc["type"]), config, dict(block.pop("frozen_modules", {}) or {}),
                       bool(block.pop("includes_frozen", False)), block)
        if "policy" in doc and isinstance(doc.get("config"), Mapping):
            if doc.get("format") != 1:
                raise CheckpointError(f"{where}: unknown checkpoint format {doc.get('format')!r} (this vlastack "
                                      f"reads 1 and {FORMAT})")
            info = {k: v for k, v in doc.items()
                    if k not in ("policy", "format", "config", "frozen_modules", "includes_frozen")}
            return cls(str(doc["policy"]), dict(doc["config"]), dict(doc.get("frozen_modules") or {}),
                       bool(doc.get("includes_frozen", False)), info)
        raise CheckpointError(f"{where}: not a vlastack policy config (no 'type' field naming the policy); "
                              f"keys: {sorted(doc)[:12]}")


def read_meta(path: str | os.PathLike) -> CheckpointMeta:
    """The :class:`CheckpointMeta` of local checkpoint directory ``path``."""
    f = Path(path) / CONFIG_FILE
    try:
        doc = json.loads(f.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} is not a policy checkpoint: expected {CONFIG_FILE} and {WEIGHTS_FILE}") \
            from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{f}: unreadable ({e})") from None
    return CheckpointMeta.from_json(doc, str(f))


# ---------------------------------------------------------------- writing


def _replace_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_checkpoint(path: str | os.PathLike, meta: CheckpointMeta, tensors: Mapping[str, Any]) -> Path:
    """Write ``model.safetensors``, ``README.md`` and ``config.json`` into directory ``path``, each atomically.

    ``config.json`` goes last, so a reader never sees a config newer than its weights.
    """
    from safetensors.torch import save_file

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    doc = meta.to_json()
    tmp_w = path / (WEIGHTS_FILE + ".tmp")
    save_file(dict(tensors), str(tmp_w), metadata={"format": "pt", "type": meta.type, "vlastack_format": str(FORMAT)})
    os.replace(tmp_w, path / WEIGHTS_FILE)
    _replace_text(path / CARD_FILE, model_card(meta, read_eval_info(path)))
    _replace_text(path / CONFIG_FILE, json.dumps(doc, indent=2))
    return path


# ---------------------------------------------------------------- loading weights


def load_weights(policy: Any, path: str | os.PathLike, meta: CheckpointMeta, strict: bool = True,
                 skip: Sequence[str] = ()) -> list[str]:
    """Load checkpoint ``path``'s weights into ``policy``; returns the names left at their initialisation.

    ``strict``: every weight of the policy except rebuilt frozen encoders must be in the checkpoint
    with the same shape, and nothing else (else :class:`CheckpointError` listing the differences).
    Not strict (fine-tuning): every tensor whose name and shape match loads, the rest stay fresh.
    Names starting with a prefix in ``skip`` are never loaded (e.g. ``"normalizer."`` to refit it).
    Frozen encoders rebuilt from the config must have the fingerprint they were trained with.
    """
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / WEIGHTS_FILE))
    own = policy.state_dict()
    frozen = policy.frozen_modules()
    rebuilt = () if meta.includes_frozen else tuple(p + "." for p in frozen)
    skip = tuple(skip)
    if strict:
        missing = sorted(k for k in own if k not in state and not k.startswith(rebuilt))
        unexpected = sorted(k for k in state if k not in own)
        shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}"
                        for k in state if k in own and state[k].shape != own[k].shape)
        if missing or unexpected or shapes:
            raise CheckpointError(f"{path}: weights do not match the {meta.type!r} policy built from its config: "
                                  f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}")
    load = {k: v for k, v in state.items()
            if k in own and tuple(own[k].shape) == tuple(v.shape) and not k.startswith(skip)}
    policy.load_state_dict(load, strict=False)
    for prefix, fp in meta.frozen_modules.items():
        if prefix not in frozen:
            if strict:
                raise CheckpointError(f"{path}: checkpoint expects frozen module {prefix!r}, the rebuilt policy has none")
            continue
        now = frozen[prefix].fingerprint()
        if now != fp:
            raise CheckpointError(f"{path}: frozen module {prefix!r} ({getattr(frozen[prefix], 'name', '?')}) has "
                                  f"weights {now}, the checkpoint was trained with {fp}; install the same encoder "
                                  "weights or save with include_frozen=True")
    return sorted(k for k in own if k not in load and not k.startswith(rebuilt + skip))


# ---------------------------------------------------------------- the model card


def read_eval_info(path: str | os.PathLike) -> dict[str, Any] | None:
    """``eval_info.json`` beside a checkpoint (or the file itself), or None when absent or unreadable."""
    f = Path(path)
    f = f / EVAL_FILE if f.is_dir() else f
    try:
        doc = json.loads(f.read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and isinstance(doc.get("summary"), dict) else None


def _pct(x: float) -> str:
    return f"{100 * float(x):.1f}%"


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4g}" if math.isfinite(v) else str(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(_fmt(x) for x in v) if v else "-"
    return "-" if v is None else str(v)


def model_card(meta: CheckpointMeta, eval_info: Mapping[str, Any] | None = None, name: str | None = None) -> str:
    """The ``README.md`` of a checkpoint: Hub metadata, what the policy is, how it was trained, results.

    ``name``: the Hub repo id (the title and the usage lines), when known.
    """
    c, t = meta.config, meta.training
    data = t.get("data") or {}
    title = name or f"vlastack {meta.type} policy"
    rows = [("policy", f"`{meta.type}`"), ("preset", _fmt(meta.preset)),
            ("parameters", f"{meta.info['parameters'] / 1e6:.2f}M trainable"
             if isinstance(meta.info.get("parameters"), int) else "-")]
    for key, label in (("cameras", "cameras"), ("image_size", "image size (H, W)"), ("state_dim", "state dim"),
                       ("action_dim", "action dim"), ("horizon", "action chunk (steps)"),
                       ("vision_encoder", "vision encoder"), ("text_encoder", "text encoder")):
        if key in c:
            rows.append((label, _fmt(c[key])))
    rows.append(("frozen encoders", _fmt(sorted(meta.frozen_modules)) if meta.frozen_modules else "none"))
    rows.append(("data", _fmt(data.get("paths")) if data else "-"))
    if data.get("train_episodes") is not None:
        rows.append(("episodes", f"{data['train_episodes']} train, {data.get('val_episodes', 0)} validation"))
    rows.append(("training steps", _fmt(t.get("step"))))
    if t.get("val_loss") is not None:
        rows.append(("validation loss", _fmt(t["val_loss"])))
    if t.get("init_from"):
        rows.append(("fine-tuned from", _fmt(t["init_from"])))
    if t:
        rows.append(("EMA weights", "yes" if t.get("ema") else "no"))
    tags = ["robotics", "vision-language-action", "vlastack", meta.type]
    lines = ["---", "library_name: vlastack", "pipeline_tag: robotics", "tags:", *[f"- {x}" for x in tags], "---", "",
             f"# {title}", "",
             f"A `{meta.type}` vision-language-action policy trained with "
             "[vlastack](https://github.com/vlastack/vlastack): it reads camera images, the robot state and a "
             "language instruction and predicts a chunk of actions.", "",
             "| | |", "|---|---|", *[f"| {k} | {v} |" for k, v in rows], ""]
    lines += ["## Evaluation", ""]
    if eval_info:
        s = eval_info["summary"]
        lines += [f"From `{EVAL_FILE}` ({eval_info.get('suite', '?')}, {eval_info.get('episodes_per_seed', '?')} "
                  f"episodes per task and seed group, seed groups {eval_info.get('seeds', '?')}"
                  f"{'' if eval_info.get('complete', True) else '; INCOMPLETE'}):", "",
                  "| task | success | 95% Wilson CI | successes / episodes |", "|---|---:|---:|---:|"]
        blocks = [*(s.get("per_task") or {}).items(), ("**overall**", s.get("overall"))]
        lines += [f"| {n} | {_pct(b['success_rate'])} | [{_pct(b['ci_low'])}, {_pct(b['ci_high'])}] | "
                  f"{b['successes']} / {b['episodes']} |" for n, b in blocks if b]
    else:
        lines.append(f"No evaluation recorded (run `vlastack eval` and place its `{EVAL_FILE}` beside the weights).")
    repo = name if name and "/" in name else "<org>/<name>"
    lines += ["", "## Use", "", "```python", "from vlastack.policies.base import Policy", "",
              f'policy = Policy.from_pretrained("{repo}")  # or a local directory',
              "chunk = policy.sample_actions(observation)  # actions (B, H, D_a) in physical units", "```", "",
              "```bash", f"vlastack eval checkpoint={repo} env=kitchen episodes=10", "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------- the Hub


def stage_for_upload(checkpoint: str | os.PathLike, out: str | os.PathLike,
                     eval_info: str | os.PathLike | None = None, repo_id: str | None = None) -> Path:
    """Copy checkpoint files into ``out`` in the current format, with a fresh model card.

    Format 1 configs are rewritten as format 2; ``eval_info`` (a file or an eval ``out`` directory)
    replaces the checkpoint's own ``eval_info.json``. Training state is never staged.
    """
    src = locate(checkpoint)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    meta = read_meta(src)
    ev_src = Path(eval_info) if eval_info is not None else src
    ev = read_eval_info(ev_src)
    if eval_info is not None and ev is None:
        raise CheckpointError(f"eval_info: {eval_info} is not an eval_info.json written by vlastack eval "
                              "(a file, or the eval out directory holding it)")
    try:
        os.link(src / WEIGHTS_FILE, out / WEIGHTS_FILE)
    except OSError:
        shutil.copyfile(src / WEIGHTS_FILE, out / WEIGHTS_FILE)
    if ev is not None:
        (out / EVAL_FILE).write_text(json.dumps(ev, indent=2))
    (out / CARD_FILE).write_text(model_card(meta, ev, name=repo_id))
    (out / CONFIG_FILE).write_text(json.dumps(meta.to_json(), indent=2))
    return out


def push(checkpoint: str | os.PathLike, repo_id: str, api: Any = None, private: bool | None = None,
         revision: str | None = None, commit_message: str | None = None,
         eval_info: str | os.PathLike | None = None, token: str | None = None) -> Any:
    """Upload a checkpoint to Hub repo ``repo_id`` (created when missing); returns the commit info.

    ``api``: an ``HfApi``-like object (``create_repo``, ``upload_folder``); a fresh ``HfApi`` by default.
    """
    if not is_repo_id(repo_id):
        raise CheckpointError(f"repo_id: {repo_id!r} is not a Hub repo id; expected <org or user>/<name>")
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    with tempfile.TemporaryDirectory(prefix="vlastack-push-") as tmp:
        staged = stage_for_upload(checkpoint, tmp, eval_info=eval_info, repo_id=repo_id)
        api.create_repo(repo_id, private=private, exist_ok=True, repo_type="model")
        return api.upload_folder(repo_id=repo_id, folder_path=str(staged), repo_type="model", revision=revision,
                                 commit_message=commit_message or f"Upload {read_meta(staged).type} policy",
                                 allow_patterns=list(HUB_FILES))


_PUSH_KEYS = {"checkpoint": "local checkpoint (directory, 'last' pointer or run directory)",
              "repo_id": "Hub repo <org or user>/<name>, created when missing",
              "private": "true/false: visibility of a newly created repo",
              "revision": "branch to commit to (default: main)",
              "eval_info": "an eval_info.json (or eval out directory) to include and summarise",
              "message": "commit message"}


def push_main(argv: list[str]) -> int:
    """``vlastack push checkpoint=DIR repo_id=ORG/NAME [private=..] [revision=..] [eval_info=..] [message=..]``."""
    usage = "usage: vlastack push checkpoint=DIR repo_id=ORG/NAME [key=value ...]\n\n" + "\n".join(
        f"  {k:<11} {v}" for k, v in _PUSH_KEYS.items()) + "\n\nThe token comes from `hf auth login` or HF_TOKEN."
    if not argv or argv[0] in ("-h", "--help"):
        print(usage)
        return 0
    args: dict[str, str] = {}
    for a in argv:
        k, sep, v = a.partition("=")
        if not sep or k not in _PUSH_KEYS:
            print(f"vlastack push: bad argument {a!r}; expected key=value with key one of {list(_PUSH_KEYS)}"
                  f"\n\n{usage}", file=sys.stderr)
            return 2
        args[k] = v
    missing = [k for k in ("checkpoint", "repo_id") if not args.get(k)]
    if missing:
        print(f"vlastack push: missing {missing}\n\n{usage}", file=sys.stderr)
        return 2
    private = args.get("private")
    if private is not None and private.lower() not in ("true", "false"):
        print(f"vlastack push: private={private!r}; expected true or false", file=sys.stderr)
        return 2
    try:
        info = push(args["checkpoint"], args["repo_id"], private=None if private is None else private.lower() == "true",
                    revision=args.get("revision"), commit_message=args.get("message"), eval_info=args.get("eval_info"))
    except (FileNotFoundError, CheckpointError) as e:
        print(f"vlastack push: {e}", file=sys.stderr)
        return 1
    except Exception as e:  # noqa: BLE001 - the hub's errors (auth, network, offline mode): one line, no trace
        why = str(e).strip().splitlines()[0] if str(e).strip() else ""
        print(f"vlastack push: uploading to {args['repo_id']} failed ({type(e).__name__}: {why}); check the token "
              "(hf auth login or HF_TOKEN), the network, and that HF_HUB_OFFLINE is unset", file=sys.stderr)
        return 1
    print(f"pushed {args['checkpoint']} to {args['repo_id']}: {getattr(info, 'commit_url', info)}")
    return 0


__all__ = ["FORMAT", "CONFIG_FILE", "WEIGHTS_FILE", "CARD_FILE", "EVAL_FILE", "CheckpointError", "CheckpointMeta",
           "resolve_checkpoint", "is_repo_id", "locate", "read_meta", "write_checkpoint", "load_weights",
           "read_eval_info", "model_card", "stage_for_upload", "push", "push_main"]
