"""rvdeploy run: generate text with a bundle on a board."""

from __future__ import annotations

from typing import Annotated

import typer

from .. import api
from ._options import MAX_TOKENS, Board, BundleArg, Json
from ._output import err, out, print_json


def run(
    bundle: BundleArg,
    board: Board = "local",
    prompt: Annotated[str, typer.Option("--prompt", "-p", help="Text to continue (tokenized on this machine).")] = "Beautiful is",
    max_new_tokens: Annotated[int, typer.Option("--max-new-tokens", "-n", min=1, max=MAX_TOKENS,
                                                help="Tokens to generate (greedy).")] = 32,
    json_: Json = False,
) -> None:
    """Run a bundle's `generate` entry point on a board and print the continuation."""
    result = api.run(bundle, board=board, prompt=prompt, max_new_tokens=max_new_tokens)
    if json_:
        print_json(result.to_dict())
        return
    out.print(result.prompt + result.text, markup=False)
    err.print(f"[dim]{len(result.ids)} tokens on {result.board} in {result.seconds:.2f} s (module load included)[/dim]")


def register(app: typer.Typer) -> None:
    app.command("run")(run)
