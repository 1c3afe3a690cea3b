"""descend: a Lightning + Hydra training template that makes gradient descent visible."""

__version__ = "0.1.0"
