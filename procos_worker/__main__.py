from procos_worker.ops.cli import main

raise SystemExit(main())
