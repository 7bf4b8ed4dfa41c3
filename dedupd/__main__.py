from dedupd.cli import main

raise SystemExit(main())
