import sys

from dpdiffusion.cli import main

sys.exit(main())
