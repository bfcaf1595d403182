"""Generation sessions on a board through the bundle's runner: one prompt (`rvdeploy run`) or a conversation
(`rvdeploy chat`), text streamed as tokens arrive. Tokenization and the chat template stay on this machine;
the board sees token ids only."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from .boards import get_board
from .bundle import Bundle
from .chat import ChatTemplate
from .errors import RvdeployError
from .generation import Sampling, TextStream, Turn, rates, runner_args, turn_line
from .tokenizer import TextCodec

TextHook = Callable[[str], None]


def _noop(_: str) -> None:
    pass


def open_bundle(path) -> tuple[Bundle, TextCodec]:
    bundle = Bundle.open(path)
    bundle.verify()
    if not bundle.manifest.tokenizer:
        raise RvdeployError(
            f"{bundle.path} has no tokenizer.json: the model came without one",
            hint="rebuild from a model directory that has tokenizer.json",
        )
    return bundle, TextCodec(bundle.file(bundle.manifest.tokenizer))


def chat_template(bundle: Bundle, required: bool) -> ChatTemplate | None:
    name = bundle.manifest.tokenizer_config
    if name is None and not required:
        return None
    return ChatTemplate.load(bundle.file(name) if name else None)


def check_room(bundle: Bundle, used: int, new: int, max_new_tokens: int) -> None:
    limit = bundle.manifest.max_context
    if used + new + max_new_tokens > limit:
        already = f" after {used} in this session" if used else ""
        raise RvdeployError(
            f"prompt ({new} tokens{already}) + --max-new-tokens {max_new_tokens} exceeds the "
            f"model's context of {limit} tokens"
        )


@dataclass
class Session:
    """A conversation with one runner process on the board: each `say` is a turn whose ids follow what the
    runner's KV cache already holds. With a chat template the conversation is rendered by it and each turn
    sends only the new part; without one each turn's text is appended as it is."""

    bundle: Bundle
    codec: TextCodec
    board_spec: str
    sampling: Sampling
    max_new_tokens: int
    template: ChatTemplate | None = None
    system: str | None = None
    ctrl_c_ends_turn: bool = False  # chat: Ctrl-C stops the reply, not the session
    messages: list = field(default_factory=list)
    used: int = 0  # tokens the runner's cache holds (or will, with the last one of the previous turn)
    _rendered: str = ""
    _board = None
    _proc = None

    def __enter__(self) -> "Session":
        self._board = get_board(self.board_spec).__enter__()
        if self.system is not None:
            if self.template is None:
                raise RvdeployError("--system needs the model's chat template", hint="drop --system")
            self.messages.append({"role": "system", "content": self.system})
        return self

    def __exit__(self, *exc) -> bool:
        try:
            if self._proc is not None:
                self._proc.__exit__(*exc)
        finally:
            self._board.__exit__(*exc)
        return False

    @property
    def board(self) -> str:
        return self._board.name

    def _new_ids(self, user: str) -> list[int]:
        if self.template is None:
            return self.codec.encode(user, add_special_tokens=not self._rendered)
        self.messages.append({"role": "user", "content": user})
        text = self.template.render(self.messages, add_generation_prompt=True)
        common = 0  # the part the cache already holds (all of it unless the template rewrites history)
        for a, b in zip(text, self._rendered):
            if a != b:
                break
            common += 1
        return self.codec.encode(text[common:], add_special_tokens=False)

    def say(self, user: str, on_text: TextHook = _noop) -> tuple[list[int], Turn]:
        """One turn: the ids sent and the runner's Turn (ids, why it ended, its timings); text via ON_TEXT."""
        ids = self._new_ids(user)
        check_room(self.bundle, self.used, len(ids), self.max_new_tokens)
        if self._proc is None:
            args = runner_args(self.bundle.manifest, ids, self.max_new_tokens, self.sampling, interactive=True)
            self._proc = self._board.start_runner(self.bundle, args).__enter__()
        else:
            self._proc.send(turn_line(ids, self.max_new_tokens))
        turn, stream = Turn(), TextStream(self.codec)
        try:
            self._proc.read_turn(turn, lambda token: on_text(stream.push(token)))
        except KeyboardInterrupt:
            if not self.ctrl_c_ends_turn:
                raise
            self._proc.interrupt()  # the runner ends the turn at its next token and waits for another
            self._proc.read_turn(turn)
        if not turn.reason:
            self._proc.finish()  # the runner ended mid-turn: its error, as one line
            raise RvdeployError(f"the runner on {self.board} stopped before the turn ended")
        on_text(stream.flush())
        self.used = int(turn.stats.get("context_used", self.used + len(ids) + len(turn.ids)))
        reply = self.codec.decode(turn.ids)
        if self.template is not None:
            self.messages.append({"role": "assistant", "content": reply})
            self._rendered = self.template.render(self.messages, add_generation_prompt=False)
        else:
            self._rendered += user + reply
        return ids, turn

    def close(self) -> None:
        if self._proc is not None:
            self._proc.finish()


@dataclass(frozen=True)
class RunResult:
    prompt: str
    prompt_ids: list[int]
    ids: list[int]
    text: str
    seconds: float
    board: str
    reason: str = ""
    stats: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {
            "prompt": self.prompt,
            "prompt_ids": self.prompt_ids,
            "ids": self.ids,
            "text": self.text,
            "seconds": round(self.seconds, 4),
            "board": self.board,
            "stop_reason": self.reason,
            "runner": self.stats,
            **rates(self.stats),
        }


def run(
    bundle_path,
    *,
    board: str,
    prompt: str,
    max_new_tokens: int = 32,
    sampling: Sampling = Sampling(),
    chat: bool = False,
    system: str | None = None,
    on_text: TextHook = _noop,
) -> RunResult:
    """One prompt through the runner on BOARD: tokens streamed to ON_TEXT as they are chosen, stopping at
    the model's EOS, at MAX_NEW_TOKENS or at its context."""
    sampling.check()
    bundle, codec = open_bundle(bundle_path)
    if system is not None and not chat:
        raise RvdeployError("--system belongs to --chat")
    template = chat_template(bundle, required=True) if chat else None
    start = time.perf_counter()
    with Session(bundle, codec, board, sampling, max_new_tokens, template, system) as session:
        ids, turn = session.say(prompt, on_text)
        session.close()
        name = session.board
    return RunResult(
        prompt, ids, turn.ids, codec.decode(turn.ids), time.perf_counter() - start, name, turn.reason, turn.stats
    )
