"""Packages from the npm registry for tests (ical.js, axe-core), installed into ``tests/.node`` on first use.

Nothing of them is committed: each package is installed with ``npm install --no-save`` into a folder of its
own (``tests/.node/<package>@<version>``, git-ignored) the first time a test asks for it, and reused after
that. Without node/npm, or when the install fails, the asking test skips and says why; with
``LABSHARE_REQUIRE_SERVICES=1`` (as CI sets it) it fails instead.
"""

from __future__ import annotations

import fcntl
import shutil
import subprocess
from pathlib import Path

from tests.infra import unavailable

NODE_DIR = Path(__file__).resolve().parent / ".node"


def npm_file(package: str, version: str, path: str, *, needs_node: bool = True) -> Path:
    """``path`` inside ``package@version``, installed from the npm registry the first time.

    ``needs_node``: the test also runs the file with node (not only loads it into a browser).
    """
    if not shutil.which("npm") or (needs_node and not shutil.which("node")):
        needed = "node and npm are" if needs_node else "npm is"
        unavailable(f"{needed} needed for {package} (apt-get install nodejs npm)")
    prefix = NODE_DIR / f"{package}@{version}"  # a new version installs anew
    wanted = prefix / "node_modules" / package / path
    prefix.mkdir(parents=True, exist_ok=True)
    with open(prefix / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one install even when tests run in parallel
        if not wanted.exists():
            try:
                done = subprocess.run(
                    ["npm", "install", "--prefix", str(prefix), "--no-audit", "--no-fund", "--no-save",
                     "--no-package-lock", f"{package}@{version}"],
                    capture_output=True, text=True, timeout=300,
                )
            except subprocess.TimeoutExpired:
                unavailable(f"npm did not install {package}@{version} within 5 minutes")
            if done.returncode != 0 or not wanted.exists():
                unavailable(f"npm could not install {package}@{version}: {done.stderr.strip()[-500:]}")
    return wanted
