
from pathomix.cli import exit_process
from pathomix.splits.folds import main

exit_process(main())
