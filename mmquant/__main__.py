import sys

from mmquant.cli import main

sys.exit(main())
