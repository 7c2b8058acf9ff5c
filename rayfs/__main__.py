from rayfs.cli import main

raise SystemExit(main())
