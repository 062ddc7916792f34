"""`python -m synapse_pypi_node --repo DIR ...`: run the node (see the package's docstring)."""

import sys

from synapse_pypi_node._main import main

sys.exit(main())
