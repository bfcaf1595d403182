"""rvdeploy chat: a conversation with a bundle on a board, one runner session (KV cache) per conversation."""

from __future__ import annotations

import sys
from typing import Annotated, Optional

import typer

from ..session import Session, chat_template, open_bundle
from ._options import MAX_TOKENS, Board, BundleArg, Seed, Temperature, TopK, TopP, sampling
from ._output import err, out


def chat(
    bundle: BundleArg,
    board: Board = "local",
    max_new_tokens: Annotated[
        int, typer.Option("--max-new-tokens", "-n", min=1, max=MAX_TOKENS, help="At most this many tokens per reply.")
    ] = 128,
    system: Annotated[
        Optional[str], typer.Option(help="A system message (models with a chat template).", show_default=False)
    ] = None,
    temperature: Temperature = 0.0,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
) -> None:
    """Talk to the model: each line you type is a turn, rendered with the model's chat template when it has
    one (else appended as plain text). Ctrl-C ends the reply, Ctrl-D (or an empty line) the session."""
    b, codec = open_bundle(bundle)
    template = chat_template(b, required=False)
    interactive = sys.stdin.isatty()
    if template is None:
        err.print("[dim]no chat template: each turn is appended to the text as it is[/dim]")
    with Session(
        b,
        codec,
        board,
        sampling(temperature, top_k, top_p, seed),
        max_new_tokens,
        template,
        system,
        ctrl_c_ends_turn=True,
    ) as session:
        while True:
            try:
                user = input("> " if interactive else "")
            except EOFError:
                break
            if not user.strip():
                break

            def show(text: str) -> None:
                if text:
                    out.print(text, end="", markup=False, highlight=False)
                    out.file.flush()

            _, turn = session.say(user, show)
            out.print()
            limit = b.manifest.max_context
            err.print(
                f"[dim]({len(turn.ids)} tokens, stop: {turn.reason}; context {session.used}/{limit} used, "
                f"{limit - session.used} left)[/dim]"
            )
        session.close()


def register(app: typer.Typer) -> None:
    app.command("chat")(chat)
