import sys

from pathomix.features.cli import main

sys.exit(main())
