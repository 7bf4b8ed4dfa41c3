"""Where dedupd looks by default: its config file and index.

Apart from dedupd.config so that a command which needs only the index (`dedupd
scan` without a config file) never imports the config's parser and dataclasses.
"""

from __future__ import annotations

from pathlib import Path

DEFAULT_CONFIG = Path("/etc/dedupd/dedupd.toml")
DEFAULT_STATE_DIR = Path("/var/lib/dedupd")
DEFAULT_DB_URL = f"sqlite:///{DEFAULT_STATE_DIR}/dedupd.db"
