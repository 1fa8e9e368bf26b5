"""python -m streamconv."""

from __future__ import annotations

import sys

from streamconv.cli.main import main

sys.exit(main())
