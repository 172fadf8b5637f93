"""worldsim: a local neural game engine (see README and docs/)."""

__version__ = "0.1.0"
