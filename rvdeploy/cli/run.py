"""rvdeploy run: generate text with a bundle on a board, streamed as it comes."""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from .. import api
from ._options import MAX_TOKENS, Board, BundleArg, Json, Seed, Temperature, TopK, TopP, sampling
from ._output import err, out, print_json


def run(
    bundle: BundleArg,
    board: Board = "local",
    prompt: Annotated[
        str,
        typer.Option(
            "--prompt", "-p", help="Text to continue, or with --chat the user's message (tokenized on this machine)."
        ),
    ] = "Beautiful is",
    max_new_tokens: Annotated[
        int,
        typer.Option(
            "--max-new-tokens",
            "-n",
            min=1,
            max=MAX_TOKENS,
            help="At most this many new tokens (generation also stops at "
            "the model's end-of-sequence token and at its context).",
        ),
    ] = 32,
    chat: Annotated[
        bool,
        typer.Option(
            "--chat",
            help="Render the prompt with the model's own chat template "
            "(tokenizer_config.json) as one user message, with the generation "
            "prompt.",
        ),
    ] = False,
    system: Annotated[
        Optional[str], typer.Option(help="A system message before the prompt (--chat only).", show_default=False)
    ] = None,
    temperature: Temperature = 0.0,
    top_k: TopK = 0,
    top_p: TopP = 1.0,
    seed: Seed = 0,
    json_: Json = False,
) -> None:
    """Generate on a board with the bundle's runner: tokens appear as they are chosen; greedy unless
    --temperature is given (then --top-k, --top-p and --seed apply)."""
    echoed = chat  # the prompt is echoed once generation has begun (it is valid text by then)

    def show(text: str) -> None:
        nonlocal echoed
        if not echoed:
            out.print(prompt, end="", markup=False, highlight=False)
            echoed = True
        if text:
            out.print(text, end="", markup=False, highlight=False)
            out.file.flush()

    streamed = {} if json_ else {"on_text": show}
    result = api.run(
        bundle,
        board=board,
        prompt=prompt,
        max_new_tokens=max_new_tokens,
        sampling=sampling(temperature, top_k, top_p, seed),
        chat=chat,
        system=system,
        **streamed,
    )
    if json_:
        print_json(result.to_dict())
        return
    out.print()
    stats = result.to_dict()
    pp, tg = stats["prefill_tokens_per_s"], stats["decode_tokens_per_s"]
    err.print(
        f"[dim]{len(result.ids)} tokens on {result.board} (stop: {result.reason}); prompt "
        f"{len(result.prompt_ids)} tokens{f' at {pp:.1f} t/s' if pp else ''}, decode"
        f"{f' {tg:.1f} t/s' if tg else ' -'}, load {result.stats.get('load_s', 0):.2f} s, "
        f"runner peak RSS {result.stats.get('peak_rss_kb', 0) / 1024:.0f} MiB[/dim]"
    )


def register(app: typer.Typer) -> None:
    app.command("run")(run)
