"""Build a robot from its config (the ``robot`` group of ``configs/``): twin, sim, ur, franka, lerobot.

Common keys: ``type``, ``fps`` (action rate), ``controller`` (:class:`~.controller.ControllerConfig`
fields), ``safety`` (:meth:`~.safety.SafetyLimits.for_chain` keys), ``cameras`` (a list of
``{name, type: opencv, device, image_size, fps}``), ``max_frame_age_s``, ``in_thread``. Per type:

- ``twin``: ``twin`` (:class:`~.twin.TwinConfig` fields);
- ``sim``: ``chain``, ``driver`` (:class:`~.sim.KinematicArmDriver` options);
- ``ur``: ``host``, ``chain`` (``ur5e``), ``driver`` (:class:`~.ur.URDriver` options);
- ``franka``: ``host``, ``driver`` (:class:`~.franka.FrankaDriver` options);
- ``lerobot``: ``robot_type``, ``robot_kwargs``, ``driver`` (:class:`~.lerobot_bridge.LeRobotDriver`
  options); joint limits in the robot's units under ``safety`` (``q_lower``, ``q_upper``, ``v_max``);
  ``joint`` action mode only (no kinematic chain).
"""

from __future__ import annotations

from typing import Any, Mapping

from vlastack.real_robot.base import Camera
from vlastack.real_robot.controller import ControlledRobot, ControllerConfig, DriverSpec
from vlastack.real_robot.kinematics import get_chain
from vlastack.real_robot.safety import SafetyLimits

ROBOT_TYPES = ("twin", "sim", "ur", "franka", "lerobot")
_COMMON = {"type", "fps", "controller", "safety", "cameras", "max_frame_age_s", "in_thread"}
_PER_TYPE = {"twin": {"twin"}, "sim": {"chain", "driver"}, "ur": {"host", "chain", "driver"},
             "franka": {"host", "driver"}, "lerobot": {"robot_type", "robot_kwargs", "driver"}}
_DRIVERS = {"sim": "vlastack.real_robot.sim:KinematicArmDriver", "ur": "vlastack.real_robot.ur:URDriver",
            "franka": "vlastack.real_robot.franka:FrankaDriver",
            "lerobot": "vlastack.real_robot.lerobot_bridge:LeRobotDriver"}


class RobotConfigError(ValueError):
    """A robot config that cannot be built; the message names the key and the valid choices."""


def _plain(x: Any) -> Any:
    """OmegaConf containers -> plain dicts/lists (leaves other values alone)."""
    try:
        from omegaconf import DictConfig, ListConfig, OmegaConf

        if isinstance(x, (DictConfig, ListConfig)):
            return OmegaConf.to_container(x, resolve=True)
    except ImportError:  # pragma: no cover - omegaconf is a dependency
        pass
    return x


def make_camera(cfg: Mapping[str, Any]) -> Camera:
    """A client-side camera from ``{name, type: opencv, device, image_size, fps}``."""
    cfg = dict(_plain(cfg))
    kind = cfg.pop("type", "opencv")
    if kind != "opencv":
        raise RobotConfigError(f"cameras[].type: unknown {kind!r}; valid choices: ['opencv']")
    if "name" not in cfg:
        raise RobotConfigError("cameras[]: every camera needs a name")
    from vlastack.real_robot.cameras import OpenCVCamera

    return OpenCVCamera(**cfg)


def make_robot(cfg: Mapping[str, Any], instruction: str | None = None) -> ControlledRobot:
    """The robot ``cfg`` describes (not yet connected); ``instruction`` fills observations' ``task``."""
    cfg = dict(_plain(cfg))
    kind = cfg.get("type")
    if kind not in ROBOT_TYPES:
        raise RobotConfigError(f"robot.type: unknown {kind!r}; valid choices: {list(ROBOT_TYPES)}")
    unknown = sorted(set(cfg) - _COMMON - _PER_TYPE[kind])
    if unknown:
        raise RobotConfigError(f"robot ({kind}): unknown keys {unknown}; valid: {sorted(_COMMON | _PER_TYPE[kind])}")
    try:
        controller = ControllerConfig(**dict(cfg.get("controller") or {}))
    except TypeError as e:
        raise RobotConfigError(f"robot.controller: {e}") from None
    safety = dict(cfg.get("safety") or {})
    fps = float(cfg.get("fps", 10.0))
    age = float(cfg.get("max_frame_age_s", 1.0))
    cameras = [make_camera(c) for c in cfg.get("cameras") or []]
    if kind == "twin":
        from vlastack.real_robot.twin import TwinConfig, TwinRobot

        if cameras:
            raise RobotConfigError("robot (twin): cameras come from the twin (twin.cameras), not robot.cameras")
        try:
            twin = TwinConfig(**dict(cfg.get("twin") or {}))
        except TypeError as e:
            raise RobotConfigError(f"robot.twin: {e}") from None
        return TwinRobot(twin, controller, safety, instruction, fps, age)
    driver = dict(cfg.get("driver") or {})
    if kind == "lerobot":
        if controller.action_mode != "joint":
            raise RobotConfigError("robot (lerobot): LeRobot robots have no kinematic chain here; "
                                   "set controller.action_mode=joint")
        missing = [k for k in ("q_lower", "q_upper", "v_max") if k not in safety]
        if missing or "robot_type" not in cfg:
            raise RobotConfigError(f"robot (lerobot): needs robot_type and safety.{', safety.'.join(missing or ['...'])} "
                                   "(joint limits in the robot's units)")
        safety.pop("v_scale", None)
        limits = SafetyLimits(**safety)
        spec = DriverSpec(_DRIVERS[kind], {"robot_type": cfg["robot_type"],
                                           "robot_kwargs": dict(cfg.get("robot_kwargs") or {}), **driver})
        return ControlledRobot(spec, None, limits, controller, cameras, instruction, fps, age,
                               in_thread=bool(cfg.get("in_thread", False)), name=f"lerobot:{cfg['robot_type']}")
    chain_name = cfg.get("chain", "ur5e" if kind == "ur" else "panda")
    try:
        chain = get_chain(chain_name)
    except ValueError as e:
        raise RobotConfigError(f"robot.chain: {e}") from None
    limits = SafetyLimits.for_chain(chain, safety)
    if kind in ("ur", "franka"):
        if not cfg.get("host"):
            raise RobotConfigError(f"robot ({kind}): host is required (the arm's IP address)")
        kwargs = {"host": cfg["host"], "chain": chain_name, **driver}
    else:
        kwargs = {"chain": chain_name, **driver}
    return ControlledRobot(DriverSpec(_DRIVERS[kind], kwargs), chain, limits, controller, cameras, instruction, fps,
                           age, in_thread=bool(cfg.get("in_thread", False)), name=kind)
