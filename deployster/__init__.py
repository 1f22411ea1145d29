"""deployster: queued, lock-safe deploys for your own VPS."""

__version__ = "0.1.0"
