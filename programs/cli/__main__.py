import sys

from programs.cli.main import main

sys.exit(main())
