"""OCPI 2.2.1: evtwin's CSMS as a CPO, and an eMSP, talking to other parties over HTTP.

- :mod:`.models`: the OCPI objects (Locations, Tokens, Sessions, CDRs, Tariffs,
  Commands, Credentials) as strict pydantic models.
"""

from .models import *  # noqa: F403
from .models import __all__ as _models_all

__all__ = list(_models_all)
