import sys

from l3m.cli import main

sys.exit(main())
