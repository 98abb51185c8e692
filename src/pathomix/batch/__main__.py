from pathomix.batch.cli import main
from pathomix.cli import exit_process

exit_process(main())
