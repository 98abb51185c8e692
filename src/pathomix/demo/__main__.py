"""``python -m pathomix.demo``: see :mod:`pathomix.demo.cli`."""

from pathomix.demo.cli import main

raise SystemExit(main())
