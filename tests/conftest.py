from __future__ import annotations

from pathlib import Path

import pytest

from tests.fakes.fixtures import fake_model_server
from tests.helpers import make_repo

__all__ = ["fake_model_server"]


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A small real git repository with a committed Python package and its test."""
    return make_repo(
        tmp_path / "repo",
        {
            "README.md": "# sample\n",
            "src/app.py": "def add(a, b):\n    return a + b\n",
            "tests/test_app.py": (
                "from src.app import add\n\n\ndef test_add():\n    assert add(1, 2) == 3\n"
            ),
            ".gitignore": "*.log\n",
        },
    )
