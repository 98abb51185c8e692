"""``python -m pathomix.tiling``: see :func:`pathomix.tiling.stage.main`."""

import logging

from pathomix.tiling.stage import main

if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    raise SystemExit(main())
