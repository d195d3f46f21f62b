from __future__ import annotations

import pytest

from simulators.pki import PkiStore


@pytest.fixture(scope="session")
def pki_store(tmp_path_factory: pytest.TempPathFactory) -> PkiStore:
    return PkiStore(tmp_path_factory.mktemp("pki"))
