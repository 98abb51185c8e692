"""``python -m pathomix.tiling``: see :func:`pathomix.tiling.stage.main`."""

from pathomix.cli import exit_process
from pathomix.tiling.stage import main

if __name__ == "__main__":
    exit_process(main())
