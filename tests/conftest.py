"""Fixtures shared by test modules."""

from __future__ import annotations

import pytest

from tests.pki import PKI, make_pki


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> PKI:
    """A CA with server and station certificates (see tests/pki.py)."""
    return make_pki(tmp_path_factory.mktemp("pki"))
