from procos_worker.cli import main

raise SystemExit(main())
