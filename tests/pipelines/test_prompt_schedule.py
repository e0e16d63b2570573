"""A1111 prompt editing / alternation: schedules from the documented semantics, the same
schedules as A1111's lark grammar gives, and per-step conditioning in the CFG denoiser."""

from __future__ import annotations

import random

import pytest
import torch

from genmodels.pipelines.build import build_pipeline
from genmodels.pipelines.conditioning import encode_prompts
from genmodels.pipelines.generate import txt2img
from genmodels.pipelines.prompt_schedule import prompt_schedule, schedule_index
from genmodels.pipelines.scheduled_cfg import (
    ScheduledCFG,
    schedule_conditioning,
    schedule_length,
)

# (prompt, steps) -> [(end_at_step, prompt), ...]: the wiki's "Prompt editing" / "Alternating
# words" examples and the table in A1111's prompt_parser docstring (10 steps).
TABLE = [
    ("test", 10, [(10, "test")]),
    ("a [b:3]", 10, [(3, "a "), (10, "a b")]),
    ("a [b: 3]", 10, [(3, "a "), (10, "a b")]),
    ("a [[[b]]:2]", 10, [(2, "a "), (10, "a [[b]]")]),
    ("[(a:2):3]", 10, [(3, ""), (10, "(a:2)")]),
    ("a [b : c : 1] d", 10, [(1, "a b  d"), (10, "a  c  d")]),
    ("a[b:[c:d:2]:1]e", 10, [(1, "abe"), (2, "ace"), (10, "ade")]),
    ("a [unbalanced", 10, [(10, "a [unbalanced")]),
    ("a [b:.5] c", 10, [(5, "a  c"), (10, "a b c")]),
    ("((a][:b:c [d:3]", 10, [(3, "((a][:b:c "), (10, "((a][:b:c d")]),
    ("[a|(b:1.1)]", 4, [(1, "a"), (2, "(b:1.1)"), (3, "a"), (4, "(b:1.1)")]),
    ("[fe|]male", 4, [(1, "female"), (2, "male"), (3, "female"), (4, "male")]),
    ("[fe|||]male", 5, [(1, "female"), (2, "male"), (3, "male"), (4, "male"), (5, "female")]),
    # [from:to:when] with a fraction / a step number, [from::when], nesting, weights inside
    ("a [cat:dog:0.5]", 20, [(10, "a cat"), (20, "a dog")]),
    ("a [cat:dog:16] b", 20, [(16, "a cat b"), (20, "a dog b")]),
    ("[cat::0.25]", 8, [(2, "cat"), (8, "")]),
    ("[(cat:1.3):[dog|fox]:2]", 4, [(1, "(cat:1.3)"), (2, "(cat:1.3)"), (3, "dog"), (4, "fox")]),
    ("[a:b:1.0]", 4, [(4, "a")]),  # with a decimal point: a fraction (all steps)
    ("[a:b:0]", 4, [(4, "b")]),
    ("[a:b:-1]", 4, [(4, "b")]),
    ("[a:b:99]", 4, [(4, "a")]),
    ("a|b [c:d:2]", 4, [(4, "a|b [c:d:2]")]),  # "|" outside brackets: not the grammar, verbatim
    ("a [{b|d{:.5] c", 10, [(10, "a [{b|d{:.5] c")]),  # as lark parses A1111's grammar
    ("\\[a:b:2\\]", 4, [(4, "\\[a:b:2\\]")]),  # escaped brackets are text
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), TABLE)
def test_schedule_table(prompt: str, steps: int, expected: list) -> None:
    assert [tuple(e) for e in prompt_schedule(prompt, steps)] == expected


def test_wiki_landscape_example() -> None:
    prompt = ("fantasy landscape with a [mountain:lake:0.25] and [an oak:a christmas tree:0.75]"
              "[ in foreground::0.6][: in background:0.25] [shoddy:masterful:0.5]")  # fmt: skip
    assert [tuple(e) for e in prompt_schedule(prompt, 100)] == [
        (25, "fantasy landscape with a mountain and an oak in foreground shoddy"),
        (50, "fantasy landscape with a lake and an oak in foreground in background shoddy"),
        (60, "fantasy landscape with a lake and an oak in foreground in background masterful"),
        (75, "fantasy landscape with a lake and an oak in background masterful"),
        (100, "fantasy landscape with a lake and a christmas tree in background masterful"),
    ]


def test_hires_and_old_scheduling() -> None:
    # a hires pass: fractions count from 1.0, step numbers from the base steps
    assert prompt_schedule("a [b:.5] c", 10, hires_steps=10) == [(10, "a b c")]
    assert prompt_schedule("a [b:1.5] c", 10, hires_steps=10) == [(5, "a  c"), (10, "a b c")]
    assert prompt_schedule("a [b:13] c", 10, hires_steps=10) == [(3, "a  c"), (10, "a b c")]
    # A1111's "old prompt editing timelines": < 1 a fraction, from 1 on a step number
    assert prompt_schedule("[a:b:1.0]", 4, old_scheduling=True) == [(1, "a"), (4, "b")]
    assert prompt_schedule("[a:b:0.5]", 4, old_scheduling=True) == [(2, "a"), (4, "b")]


def test_step_index_rule() -> None:
    """Entry k is used while the 0-based sampler step <= its end (A1111 reconstruct_cond_batch)."""
    s = prompt_schedule("[a:b:2]", 4)
    assert [s[schedule_index(s, i)].text for i in range(4)] == ["a", "a", "a", "b"]
    assert schedule_index(s, 99) == 1


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="prompt must be a str"):
        prompt_schedule(None, 4)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="steps must be a positive integer"):
        prompt_schedule("a", 0)


def _random_prompt(rng: random.Random, depth: int = 0) -> str:
    k = rng.random()
    if depth > 3 or k < 0.3:
        return rng.choice(["a", "b c", " ", "", "x ", "\\(", ",", "1", "0.5"])
    sub = lambda: _random_prompt(rng, depth + 1)  # noqa: E731
    if k < 0.45:
        when = rng.choice(["0.5", " 2", "3 ", "1.0", "-1", ".25", "1e1", "0"])
        return f"[{sub()}:{sub()}:{when}]"
    if k < 0.55:
        return f"[{sub()}:{rng.choice(['0.5', ' 2', '3'])}]"
    if k < 0.7:
        return "[" + "|".join(sub() for _ in range(rng.randint(1, 3))) + "]"
    if k < 0.8:
        return f"({sub()}{rng.choice(['', ':1.2'])})"
    return sub() + sub()


def test_same_schedules_as_a1111_grammar() -> None:
    """A1111's grammar (its published lark text) parsed by lark, evaluated by the documented
    rules, against our parser on generated nested prompts."""
    lark = pytest.importorskip("lark")
    grammar = r"""
    !start: (prompt | /[][():]/+)*
    prompt: (emphasized | scheduled | alternate | plain | WHITESPACE)*
    !emphasized: "(" prompt ")"
            | "(" prompt ":" prompt ")"
            | "[" prompt "]"
    scheduled: "[" [prompt ":"] prompt ":" [WHITESPACE] NUMBER [WHITESPACE] "]"
    alternate: "[" prompt ("|" [prompt])+ "]"
    WHITESPACE: /\s+/
    plain: /([^\\\[\]():|]|\\.)+/
    %import common.SIGNED_NUMBER -> NUMBER
    """
    parser = lark.Lark(grammar)

    def reference(text: str, steps: int) -> list:
        try:
            tree = parser.parse(text)
        except lark.exceptions.LarkError:
            return [(steps, text)]
        ends, whens = {steps}, {}
        for node in tree.iter_subtrees():
            if node.data == "scheduled":
                s = str(node.children[-2])
                whens[id(node)] = w = min(steps, int(float(s) * (steps if "." in s else 1)))
                if w >= 1:
                    ends.add(w)
            elif node.data == "alternate":
                ends.update(range(1, steps + 1))

        def render(node, t: int) -> str:
            if node is None or isinstance(node, lark.Token):
                return "" if node is None else str(node)
            if node.data == "scheduled":
                return render(node.children[0 if t <= whens[id(node)] else 1], t)
            if node.data == "alternate":
                return render(node.children[(t - 1) % len(node.children)], t)
            return "".join(render(c, t) for c in node.children)

        return [(t, render(tree, t)) for t in sorted(ends)]

    rng = random.Random(0)
    for _ in range(60):
        prompt = _random_prompt(rng) + _random_prompt(rng)
        assert [tuple(e) for e in prompt_schedule(prompt, 5)] == reference(prompt, 5), prompt


# -- conditioning per step ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline()


def test_each_distinct_prompt_encoded_once_and_used_at_its_steps(pipe) -> None:
    cond, uncond = schedule_conditioning(
        pipe.text_encoder, "sd1", "[a cat|a dog]", "[blurry::2]", 4, (16, 16)
    )
    assert len({id(c["context"]) for c in cond.conds}) == 2  # two texts, alternating
    ctx, _ = encode_prompts(pipe.text_encoder, ["a cat", "a dog", "blurry", ""])
    torch.testing.assert_close(cond.at(0)["context"], ctx[0:1])
    torch.testing.assert_close(cond.at(2)["context"], ctx[1:2])
    torch.testing.assert_close(uncond.at(2)["context"], ctx[2:3])
    torch.testing.assert_close(uncond.at(3)["context"], ctx[3:4])

    seen: list[tuple[float, float]] = []

    def fake(x, sigma, context):  # records (cond, uncond) context per call
        seen.append((float(context[0].sum()), float(context[-1].sum())))
        return torch.zeros_like(x)

    guided = ScheduledCFG(fake, cond, uncond, scale=7.0)
    x = torch.zeros(1, 4, 2, 2)
    for _ in range(4):  # each call is one step of the schedule (A1111 counts calls)
        guided(x, torch.ones(1))
    sums = [float(ctx[k].sum()) for k in range(4)]
    # A1111: [a|b] gives a for steps 0-1 (entry 1 ends at step 1), b at 2, a at 3
    assert seen == [(sums[0], sums[2]), (sums[0], sums[2]), (sums[1], sums[2]), (sums[0], sums[3])]


def test_two_call_samplers_walk_a_schedule_twice_as_long(pipe) -> None:
    """A1111's second-order samplers: the schedule has 2 x steps entries, one per model call."""
    assert schedule_length("Heun", 4) == 8 and schedule_length("DPM++ SDE", 3) == 6
    assert schedule_length("Euler a", 4) == 4 and schedule_length("DDIM", 4) == 4
    contexts = []
    original = pipe.denoiser.forward

    def spy(x, sigma, **cond):
        contexts.append(float(cond["context"][0].sum()))
        return original(x, sigma, **cond)

    pipe.denoiser.forward = spy
    try:
        txt2img(pipe, "[a cat:a dog:0.5]", sampler="Heun", width=16, height=16, steps=4, seed=1)
    finally:
        del pipe.denoiser.forward
    ctx, _ = encode_prompts(pipe.text_encoder, ["a cat", "a dog"])
    cat, dog = float(ctx[0].sum()), float(ctx[1].sum())
    # 7 calls (the last Heun step has one); entry "a cat" ends at call 4 of the 8-call schedule
    assert contexts == [cat] * 5 + [dog] * 2


def test_prompt_editing_in_txt2img(pipe) -> None:
    opts = dict(width=16, height=16, steps=4, seed=1)
    cat = txt2img(pipe, "a cat", **opts).latents
    dog = txt2img(pipe, "a dog", **opts).latents
    assert torch.equal(txt2img(pipe, "a [cat:dog:4]", **opts).latents, cat)  # never switches
    assert torch.equal(txt2img(pipe, "a [cat:dog:0]", **opts).latents, dog)  # switched at once
    mixed = txt2img(pipe, "a [cat:dog:2]", **opts).latents
    assert not torch.allclose(mixed, cat) and not torch.allclose(mixed, dog)
    assert txt2img(pipe, "a [cat:dog:2]", **opts).parameters[0].prompt == "a [cat:dog:2]"
