"""Where the environments made once for other runtimes and tool chains are kept (torch-free)."""

from __future__ import annotations

import os
from pathlib import Path


def default_cache_dir() -> Path:
    """``$APERTURE_RUNTIMES_DIR``, else the user cache folder's ``aperture_zoo/runtimes``."""
    env = os.environ.get("APERTURE_RUNTIMES_DIR")
    base = Path(env) if env else Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "aperture_zoo" / "runtimes"
    from aperture_zoo.files import user_path

    return user_path(base)
