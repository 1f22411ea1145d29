"""Fixtures of the server tests: two registered projects."""

from __future__ import annotations

from pathlib import Path

import pytest

from deployster.models import Project
from deployster.service import Deployster


@pytest.fixture
async def app_project(core: Deployster, project_dir: Path) -> Project:
    """The project at ``project_dir`` (named my-app), registered."""
    return await core.projects.add(str(project_dir))


@pytest.fixture
async def other(core: Deployster, tmp_path: Path) -> Project:
    """A second registered project, ``other-app`` beside it."""
    path = tmp_path / "other-app"
    path.mkdir()
    return await core.projects.add(str(path))
