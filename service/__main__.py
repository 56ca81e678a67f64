"""`python -m service` is the `schoolgate` command."""

from service.cli import main

main()
