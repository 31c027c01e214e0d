"""The terminal conversation behind `danlu chat`: a read-reply loop that behaves as llama.cpp's and
Ollama's do.

- Ctrl-C while a reply streams stops that reply only; the part already shown stays in the conversation
  (the model sees it next turn), marked "[stopped]". Ctrl-C twice at the prompt, Ctrl-D, or /exit quits.
- A reply that ran into --max-new-tokens ends with "[cut at N tokens]", so a truncated answer is never
  mistaken for a finished one.
- /reset, /system TEXT, /save FILE, /help; every command says what it did.
- Marks, notes and the banner go to stderr (flushed before any reply), the replies to stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

HELP = """commands:
  /help          this list
  /reset         forget the conversation (the system prompt stays)
  /system TEXT   set the system prompt (no TEXT: show it; /system - clears it)
  /save FILE     write the conversation as JSON messages [{"role": ..., "content": ...}, ...]
  /exit, /quit   leave (also Ctrl-D, or Ctrl-C twice at the prompt)
Ctrl-C while the model answers stops that answer; what it had written stays in the conversation."""


class Reply:
    """One streamed answer: its text so far, the tokens it took and why it ended."""

    def __init__(self) -> None:
        self.text = ""
        self.n_tokens = 0
        self.finish: str | None = None  # "stop" (end token or stop string), "length", "interrupted"


def stream_reply(
    model: Any, tokenizer: Any, prompt: str, options: dict[str, Any], reply: Reply
) -> Iterator[str]:
    """`danlu.stream` through the engine's rows, recording the tokens generated and why the answer ended
    (the engine's finish reason) in `reply`."""
    from danlu.generate.engine import _rows

    updates, rows = _rows(model, tokenizer, [prompt], dict(options))
    try:
        for update in updates:
            reply.n_tokens = len(rows[0].ids)
            if update.piece:
                reply.text += update.piece
                yield update.piece
            if update.done is not None:
                reply.finish = update.done.finish_reason
    finally:
        reply.n_tokens = len(rows[0].ids)
        updates.close()


class ChatSession:
    """The conversation and its commands; `run` is the loop."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        options: dict[str, Any],
        system: str | None = None,
        out: TextIO | None = None,
        err: TextIO | None = None,
    ) -> None:
        self.model, self.tokenizer = model, tokenizer
        self.options = dict(options)
        if tokenizer.end_of_turn_ids:
            self.options["stop_token_ids"] = tokenizer.end_of_turn_ids
        self.system = system or None
        self.turns: list[dict[str, str]] = []  # user and assistant messages, the system prompt apart
        self.out = out or sys.stdout
        self.err = err or sys.stderr

    @property
    def messages(self) -> list[dict[str, str]]:
        head = [{"role": "system", "content": self.system}] if self.system else []
        return head + self.turns

    def note(self, text: str) -> None:
        self.out.flush()  # a note never overtakes the reply it follows
        print(text, file=self.err, flush=True)

    def run(self, read: Any = None) -> int:
        """Read lines with `read` (default: `input`, looked up now so a test's patch applies)."""
        read = read or input
        self.note("danlu chat — /help for commands; Ctrl-C stops a reply; Ctrl-C twice or Ctrl-D quits")
        interrupted_at_prompt = False
        while True:
            try:
                line = read("you> ")
            except EOFError:
                self.note("")
                return 0
            except KeyboardInterrupt:
                if interrupted_at_prompt:
                    self.note("\nbye")
                    return 0
                interrupted_at_prompt = True
                self.note("\n(Ctrl-C again or Ctrl-D to quit)")
                continue
            interrupted_at_prompt = False
            line = line.strip()
            if not line:
                continue
            if line.startswith("/"):
                if self.command(line):
                    return 0
                continue
            self.answer(line)

    def command(self, line: str) -> bool:
        """Run one /command; True means leave."""
        name, _, rest = line.partition(" ")
        rest = rest.strip()
        if name in ("/exit", "/quit", "/bye"):
            return True
        if name == "/help":
            self.note(HELP)
        elif name == "/reset":
            n = len(self.turns)
            self.turns = []
            kept = "; the system prompt stays" if self.system else ""
            self.note(f"[conversation reset: {n} message{'s' * (n != 1)} forgotten{kept}]")
        elif name == "/system":
            if not rest:
                self.note(f"[system prompt: {self.system!r}]" if self.system else "[no system prompt]")
            elif rest == "-":
                self.system = None
                self.note("[system prompt cleared]")
            else:
                self.system = rest
                self.note(f"[system prompt set ({len(rest)} characters); it applies from the next reply]")
        elif name == "/save":
            self.save(rest)
        else:
            self.note(f"[unknown command {name}; /help lists the commands]")
        return False

    def save(self, file: str) -> None:
        if not file:
            self.note("[/save needs a file name, e.g. /save chat.json]")
            return
        path = Path(file).expanduser()
        try:
            path.write_text(json.dumps(self.messages, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
        except OSError as e:
            self.note(f"[could not write {path}: {e.strerror or e}; the conversation is unchanged]")
            return
        self.note(f"[saved {len(self.messages)} messages to {path}]")

    def answer(self, user: str) -> None:
        self.turns.append({"role": "user", "content": user})
        reply = Reply()
        self.out.write("bot> ")
        self.out.flush()
        try:  # Ctrl-C anywhere in here (prefill included) stops this reply only
            prompt = self.tokenizer.apply_chat_template(self.messages, add_generation_prompt=True)
            for piece in stream_reply(self.model, self.tokenizer, prompt, self.options, reply):
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            reply.finish = "interrupted"
        self.out.write("\n")
        self.out.flush()
        if reply.finish == "interrupted":
            self.note(f"[stopped after {reply.n_tokens} tokens; the partial reply is kept]")
        elif reply.finish == "length":
            self.note(f"[cut at {reply.n_tokens} tokens; --max-new-tokens allows longer replies]")
        self.turns.append({"role": "assistant", "content": reply.text.strip()})


def chat_loop(model: Any, tokenizer: Any, options: dict[str, Any], system: str | None = None) -> int:
    """Talk with `model` in the terminal until the user leaves; returns the exit code."""
    return ChatSession(model, tokenizer, options, system).run()
