"""The operator's dashboard: a Textual front end over the core (issue #4).

It reads and acts only through ``deployster.overview`` and ``deployster.control``;
nothing here names a Redis key.
"""
