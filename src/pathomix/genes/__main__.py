import sys

from pathomix.genes.hvg import main

sys.exit(main())
