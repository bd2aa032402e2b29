"""`python -m gpuwatch` runs the command line."""

from gpuwatch.cli import main

main()
