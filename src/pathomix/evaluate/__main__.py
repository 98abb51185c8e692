
from pathomix.cli import exit_process
from pathomix.evaluate.cli import main

exit_process(main())
