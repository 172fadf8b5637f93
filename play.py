"""Play worldsim from a checkout: ``python play.py [key=value ...]`` (hydra overrides).

The thin entry of :mod:`worldsim.cli.play` (which an installed worldsim runs as
``python -m worldsim.cli.play``); its docstring lists the options.
"""

from worldsim.cli.play import main

if __name__ == "__main__":
    main()
