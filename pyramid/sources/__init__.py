"""Source readers, one module per dataset format; importing this package registers them all."""

from pyramid.sources.base import SOURCES, Source, detect_source, get_source, open_source, register

# Each import registers one reader under its name.
from pyramid.sources import videos  # noqa: F401,E402
from pyramid.sources import robomind  # noqa
from pyramid.sources import robotwin  # noqa
from pyramid.sources import egodex  # noqa
from pyramid.sources import agibot  # noqa
from pyramid.sources import lerobot  # noqa

__all__ = ["SOURCES", "Source", "detect_source", "get_source", "open_source", "register"]
