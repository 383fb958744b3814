from medret.cli import main

raise SystemExit(main())
