"""Where dedupd looks by default: its config file and index.

Apart from dedupd.config so that a command which needs only the index (`dedupd
scan` without a config file) never imports the config's parser and dataclasses.
Strings, not Paths: pathlib (with urllib.parse and ipaddress) is no import of a
rescan's start-up, before its walk is forked; dedupd.config has them as Paths.
"""

from __future__ import annotations

DEFAULT_CONFIG = "/etc/dedupd/dedupd.toml"
DEFAULT_STATE_DIR = "/var/lib/dedupd"
DEFAULT_DB_URL = f"sqlite:///{DEFAULT_STATE_DIR}/dedupd.db"
# what an index URL starts with ([database].url and --db are checked alike)
DB_URL_SCHEMES = ("sqlite:", "postgresql:", "postgresql+")
