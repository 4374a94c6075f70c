from cxrscreen.cli import main

raise SystemExit(main())
