import sys

from postfleet.cli.main import main

sys.exit(main())
