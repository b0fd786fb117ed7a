"""The episode loop for simulation and hardware, chunk executors, evaluation, policy server."""
