
from pathomix.cli import exit_process
from pathomix.genes.hvg import main

exit_process(main())
