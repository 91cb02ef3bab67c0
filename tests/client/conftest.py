"""The client package (clients/python) is its own distribution, not installed in the server's
virtualenv: its unit tests import it from the source tree. tests/e2e/test_client_package.py
installs it on its own into a fresh virtualenv."""

from __future__ import annotations

import sys
from pathlib import Path

CLIENT_SRC = Path(__file__).resolve().parents[2] / "clients" / "python"
if str(CLIENT_SRC) not in sys.path:
    sys.path.insert(0, str(CLIENT_SRC))
