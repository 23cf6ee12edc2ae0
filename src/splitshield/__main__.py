from splitshield.cli.main import main

raise SystemExit(main())
