from pathomix.batch.cli import main

raise SystemExit(main())
