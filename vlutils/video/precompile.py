"""``python -m vlutils.video.precompile``: compile the fast resize kernels into numba's cache.

Run it once after installing (``scripts/install.sh`` does; in a container image, at build
time), so that no process compiles them while it decodes (see
:func:`vlutils.video.resize_fast.compile_kernels`).
"""

from __future__ import annotations

import logging

from ..clitext import install_hint
from .resize_fast import compile_kernels

logger = logging.getLogger(__name__)


def main() -> int:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if compile_kernels():
        logger.info("vlutils: fast resize kernels compiled into numba's cache")
    else:
        logger.info("vlutils: fast resize unavailable (install the 'fast' extra: %s)", install_hint("fast"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
