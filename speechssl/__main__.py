import sys

from speechssl.cli.main import main

sys.exit(main())
