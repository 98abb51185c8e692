"""``python -m pathomix.train``."""

from pathomix.train.cli import main

raise SystemExit(main())
