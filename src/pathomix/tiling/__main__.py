"""``python -m pathomix.tiling``: see :func:`pathomix.tiling.stage.main`."""

from pathomix.tiling.stage import main

if __name__ == "__main__":
    raise SystemExit(main())
