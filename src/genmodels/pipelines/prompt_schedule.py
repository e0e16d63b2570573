"""A1111 prompt editing and alternation: a prompt -> the distinct prompts of each step range.

Syntax (stable-diffusion-webui wiki, "Prompt editing" and "Alternating words"):

* ``[from:to:when]`` -- ``from`` up to step ``when``, then ``to``;
* ``[to:when]`` -- nothing, then ``to``; ``[from::when]`` -- ``from``, then nothing;
* ``[a|b|c]`` -- ``a`` at step 1, ``b`` at step 2, ``c`` at step 3, ``a`` at step 4, ...;
* all of them nest and may hold emphasis, ``(word:1.2)``, which stays in the text for
  ``prompt_weighting`` to parse afterwards.

``when`` is a step number when written without a decimal point (``[a:b:10]``) and a fraction
of the steps when written with one (``[a:b:0.25]``, ``[a:b:1.0]`` = all steps): A1111's current
rule. ``old_scheduling=True`` is its "use old prompt editing timelines" option: a number below
1 is a fraction, from 1 on a step number. In a hires-fix second pass (``hires_steps``), step
numbers count on from the base steps and fractions from 1.0 (``[a:b:1.5]`` switches half-way
through the hires steps), as A1111.

``prompt_schedule(text, steps)`` returns ``[(end_at_step, text), ...]``: the entry used at
sampler step index ``i`` (0-based) is the first with ``i <= end_at_step`` (A1111's
``reconstruct_cond_batch``), so ``[a:b:10]`` over 20 steps uses ``a`` for indices 0-10. Each
distinct text is encoded once. A prompt the grammar cannot parse (an ``|`` outside brackets, a
trailing backslash) is used as it is for every step, as A1111. Text that only looks like a
construct (``[a:b]``, an unclosed ``[``) stays literal text. ``AND`` is not interpreted.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import NamedTuple

__all__ = ["ScheduleEntry", "prompt_schedule", "schedule_index"]

# lark's common.SIGNED_NUMBER, with A1111's optional blanks before and after it
_NUMBER = re.compile(r"\s*([+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?)\s*\]")
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+", re.S)
_STOP = set(":|])")


class ScheduleEntry(NamedTuple):
    end_at_step: int  # used for sampler step indices <= this (and after the previous entry)
    text: str


class _ParseError(Exception):
    pass


@dataclass
class _Scheduled:
    before: list | None
    after: list
    when: str  # the number as written: its decimal point decides fraction vs step


@dataclass
class _Alternate:
    options: list[list]


@dataclass
class _Emphasized:  # "(" p ")" | "(" p ":" p ")" | "[" p "]": rendered back as written
    open: str
    parts: list[list]
    close: str


class _Parser:
    """Recursive descent over A1111's lark grammar (``prompt_parser.schedule_parser``)."""

    def __init__(self, text: str) -> None:
        self.s = text

    def start(self) -> list:
        """``(prompt | /[][():]/+)*``: brackets that open no construct are literal text."""
        nodes, pos = [], 0
        while pos < len(self.s):
            part, pos = self.prompt(pos)
            nodes += part
            if pos < len(self.s):
                if self.s[pos] not in "[]():":
                    raise _ParseError(pos)  # "|" or a lone trailing backslash
                nodes.append(self.s[pos])
                pos += 1
        return nodes

    def prompt(self, pos: int) -> tuple[list, int]:
        """``(emphasized | scheduled | alternate | plain | WHITESPACE)*``, maximal."""
        nodes: list = []
        while pos < len(self.s):
            c = self.s[pos]
            if c in _STOP:
                break
            if c in "[(":
                try:
                    node, pos = self.construct(pos)
                except _ParseError:
                    break
                nodes.append(node)
                continue
            m = _PLAIN.match(self.s, pos)
            if m is None:
                break
            nodes.append(m.group(0))
            pos = m.end()
        return nodes, pos

    def expect(self, pos: int, char: str) -> int:
        if pos >= len(self.s) or self.s[pos] != char:
            raise _ParseError(pos)
        return pos + 1

    def construct(self, pos: int) -> tuple[object, int]:
        if self.s[pos] == "(":
            first, pos = self.prompt(pos + 1)
            if pos < len(self.s) and self.s[pos] == ":":
                second, pos = self.prompt(pos + 1)
                return _Emphasized("(", [first, [":"], second], ")"), self.expect(pos, ")")
            return _Emphasized("(", [first], ")"), self.expect(pos, ")")
        first, pos = self.prompt(pos + 1)
        nxt = self.s[pos] if pos < len(self.s) else ""
        if nxt == "]":
            return _Emphasized("[", [first], "]"), pos + 1
        if nxt == "|":
            options = [first]
            while pos < len(self.s) and self.s[pos] == "|":
                option, pos = self.prompt(pos + 1)
                options.append(option)
            return _Alternate(options), self.expect(pos, "]")
        if nxt != ":":
            raise _ParseError(pos)
        m = _NUMBER.match(self.s, pos + 1)
        if m is not None:  # [to:when]
            return _Scheduled(None, first, m.group(1)), m.end()
        second, pos = self.prompt(pos + 1)
        pos = self.expect(pos, ":")
        m = _NUMBER.match(self.s, pos)
        if m is None:
            raise _ParseError(pos)
        return _Scheduled(first, second, m.group(1)), m.end()


def _walk(nodes: list):
    for node in nodes:
        yield node
        if isinstance(node, _Scheduled):
            yield from _walk(node.before or [])
            yield from _walk(node.after)
        elif isinstance(node, _Alternate):
            for option in node.options:
                yield from _walk(option)
        elif isinstance(node, _Emphasized):
            for part in node.parts:
                yield from _walk(part)


def _when(
    number: str, steps: int, base_steps: int | None, old_scheduling: bool
) -> int:  # fmt: skip
    """The last step (1-based) of ``before`` (A1111 ``collect_steps``)."""
    v = float(number)
    if old_scheduling:
        v = v * steps if v < 1 else v
    elif "." in number:
        v = (v - (1.0 if base_steps is not None else 0.0)) * steps
    else:
        v = v - (base_steps or 0)
    return min(steps, int(v))


def _render(nodes: list, step: int, whens: dict[int, int]) -> str:
    out = []
    for node in nodes:
        if isinstance(node, str):
            out.append(node)
        elif isinstance(node, _Scheduled):
            chosen = (node.before or []) if step <= whens[id(node)] else node.after
            out.append(_render(chosen, step, whens))
        elif isinstance(node, _Alternate):
            out.append(_render(node.options[(step - 1) % len(node.options)], step, whens))
        else:
            inner = "".join(_render(part, step, whens) for part in node.parts)
            out.append(node.open + inner + node.close)
    return "".join(out)


def prompt_schedule(
    text: str,
    steps: int,
    hires_steps: int | None = None,
    old_scheduling: bool = False,
) -> list[ScheduleEntry]:
    """``[(end_at_step, prompt), ...]`` for ``steps`` sampler steps (A1111's
    ``get_learned_conditioning_prompt_schedules`` for one prompt); ``hires_steps``: the schedule
    of a hires-fix second pass of that many steps after ``steps`` base steps."""
    if not isinstance(text, str):
        raise ValueError(f"prompt must be a str, got {type(text).__name__}")
    if not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    base_steps = None if hires_steps is None or old_scheduling else steps
    n = steps if base_steps is None else hires_steps
    try:
        tree = _Parser(text).start()
    except _ParseError:
        return [ScheduleEntry(n, text)]
    ends, whens = {n}, {}
    for node in _walk(tree):
        if isinstance(node, _Scheduled):
            whens[id(node)] = w = _when(node.when, n, base_steps, old_scheduling)
            if w >= 1:
                ends.add(w)
        elif isinstance(node, _Alternate):
            ends.update(range(1, n + 1))
    return [ScheduleEntry(t, _render(tree, t, whens)) for t in sorted(ends)]


def schedule_index(schedule: list[ScheduleEntry], step: int) -> int:
    """Index of the entry used at 0-based sampler step ``step`` (the last one past the end)."""
    for i, entry in enumerate(schedule):
        if step <= entry.end_at_step:
            return i
    return len(schedule) - 1
