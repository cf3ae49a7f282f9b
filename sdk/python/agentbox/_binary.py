"""The agentbox executable that a platform wheel carries (``agentbox/bin/agentbox``).

The pure sdist and wheel carry none; there ``binary=``, ``$AGENTBOX_BIN`` or ``PATH`` supply it.
"""

from __future__ import annotations

import os
import sys
from typing import Optional

_NAME = "agentbox.exe" if sys.platform == "win32" else "agentbox"


def bundled_binary() -> Optional[str]:
    """The path of the executable shipped inside this package, or None when there is none."""
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bin", _NAME)
    if os.path.isfile(path) and os.access(path, os.X_OK):
        return path
    return None
