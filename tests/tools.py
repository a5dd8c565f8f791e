"""Locating the external binaries the tests drive (promtool, prometheus, helm, kubectl):
on PATH, or in .tools/bin where `make tools` puts them."""

from __future__ import annotations

import os
import shutil

import pytest

from tests.conftest import REPO

TOOLS_BIN = REPO / ".tools" / "bin"


def tool(name: str) -> str:
    found = shutil.which(name, path=f"{TOOLS_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    if not found:
        # A missing tool is a failed set-up, not a reason to skip: `make tools` installs it.
        pytest.fail(f"`{name}` not found on PATH or in {TOOLS_BIN}: run `make tools`")
    return found
