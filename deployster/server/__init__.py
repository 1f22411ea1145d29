"""The HTTP front end: a thin Quart app over the core."""

from .app import create_app

__all__ = ["create_app"]
