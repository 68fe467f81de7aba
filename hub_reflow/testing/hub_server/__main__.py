"""``python -m hub_reflow.testing.hub_server``: run the local Hub from the command line."""

from .app import main

main()
