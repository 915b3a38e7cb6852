"""Shared fixtures: one tiny random base/aligned pair on disk per test session."""

import pytest

from baco import Collaboration
from baco.testing import make_tiny_pair


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory):
    return make_tiny_pair(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def collab(tiny_dirs):
    base, aligned = tiny_dirs
    return Collaboration.from_pretrained(base, aligned, device="cpu")
