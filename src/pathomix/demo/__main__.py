"""``python -m pathomix.demo``: see :mod:`pathomix.demo.cli`."""

from pathomix.cli import exit_process
from pathomix.demo.cli import main

exit_process(main())
