
from pathomix.cli import exit_process
from pathomix.features.cli import main

exit_process(main())
