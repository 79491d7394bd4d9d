from cpn_dist.cli import main

raise SystemExit(main())
