import sys

from pathomix.evaluate.cli import main

sys.exit(main())
