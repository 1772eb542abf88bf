import sys

from pfgdf_plugin.cli import main

sys.exit(main())
