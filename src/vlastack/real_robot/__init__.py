"""The Robot protocol, fixed-rate safe controller, drivers (MuJoCo twin, UR, Franka) and teleop."""
