"""The dashboard's Pilot tests run against the real core (Redis + SQLite); their
helpers are in tests/helpers/tui.py."""
