"""The `aperture` command: a thin typer layer over the library.

Each sub-module registers its commands on ``app`` and imports torch (and friends) only inside the
command bodies, so ``aperture --help`` never pays for them.
"""

from __future__ import annotations

import typer

app = typer.Typer(
    name="aperture",
    help="Compact CIFAR-10 ResNets: list, inspect, train, evaluate, export and publish.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

@app.callback()
def _gate() -> None:
    # runs before every command: Python warnings reach stderr through the one gate for outside text
    from aperture_zoo.terminal import gate_warnings

    gate_warnings()


from . import zoo  # noqa: E402,F401  (registers commands)
from . import hub  # noqa: E402,F401
from . import train  # noqa: E402,F401
from . import export  # noqa: E402,F401
from . import runtimes  # noqa: E402,F401
from . import demo  # noqa: E402,F401
from . import data  # noqa: E402,F401


def main() -> None:
    app()
