"""``python -m pathomix.train``."""

from pathomix.cli import exit_process
from pathomix.train.cli import main

exit_process(main())
