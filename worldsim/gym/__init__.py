"""Gymnasium environments above the inference layer: ``worldsim/WorldModel-v1`` (the engine as an env)."""
