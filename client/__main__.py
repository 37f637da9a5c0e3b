from client.pipeline import main

raise SystemExit(main())
