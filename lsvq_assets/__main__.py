import sys

from lsvq_assets.cli import main

sys.exit(main())
