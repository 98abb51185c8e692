import sys

from pathomix.splits.folds import main

sys.exit(main())
