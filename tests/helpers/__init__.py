"""Test helpers shared by several test modules (real sockets and processes, no mocks)."""
