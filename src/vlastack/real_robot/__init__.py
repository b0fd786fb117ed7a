"""The robot side: Robot protocol, fixed-rate safe controller, drivers, digital twin and teleoperation.

- :mod:`.base` — the ``Robot`` and ``Camera`` protocols (timestamped frames), action layouts
  (``ee``: absolute tool pose + gripper; ``joint``: absolute joints + gripper), the robot's DatasetSpec.
- :mod:`.kinematics` — serial chains (Panda, UR5e): forward kinematics, Jacobian, damped IK.
- :mod:`.safety` — limits and the per-tick filter (joint position/velocity limits, max step per
  tick, workspace box, gripper rate).
- :mod:`.controller` — the controller process: interpolation between timestamped actions,
  stale-action drops, watchdog hold, fault counting and stop, e-stop; ``ControlledRobot``.
- drivers: :mod:`.twin` (MuJoCo digital twin in its own process), :mod:`.sim` (kinematic),
  :mod:`.ur` (ur_rtde), :mod:`.franka` (franky), :mod:`.lerobot_bridge` (any LeRobot robot);
  :mod:`.cameras` (OpenCV); :mod:`.registry` builds a robot from its config.
- :mod:`.teleop` — keyboard / SpaceMouse teleoperation recording demos into a Zarr store.

Imports: only :mod:`vlastack.types` (and, for teleop, a store object passed in); never
``policies``, ``envs`` or ``rollout``. ``vlastack deploy`` lives in :mod:`vlastack.rollout.deploy`.
"""
