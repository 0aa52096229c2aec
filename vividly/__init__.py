"""Vividly request tracking: the SDK every pipeline service imports."""

from vividly.tracker import RequestTracker

__all__ = ["RequestTracker"]
__version__ = "0.1.0"
