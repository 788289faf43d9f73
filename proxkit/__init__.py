"""proxkit: ProX (Programming Every Example) corpus refining, as a library and the `prox` CLI."""

__version__ = "0.1.0"
