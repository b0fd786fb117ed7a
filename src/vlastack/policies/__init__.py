"""Policies: layers, noise processes, encoders, normalizer, checkpoints, DUST and Dita."""
