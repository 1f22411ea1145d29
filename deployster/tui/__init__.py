"""The operator's dashboard: a Textual front end over the core.

It reads only through its ``Reader`` (``reader.py``: ``deployster.overview``
and the core's job and health reads) and acts only through
``deployster.control``; nothing here names a Redis key.
"""
