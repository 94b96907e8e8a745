from keyscope.cli.main import main

raise SystemExit(main())
