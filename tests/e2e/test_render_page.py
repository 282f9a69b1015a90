"""The widget's Markdown, code and math rendering in headless Chromium, without JupyterLab.

The committed bundle (``nbchat/notebook/static/``: the widget's module with
markdown-it, Lezer and KaTeX inside, and its CSS) runs in a plain page with a
stand-in model; answers arrive as the kernel's ``delta`` messages. However an
answer is split, its final DOM must equal the one-shot render of the saved
history; finished blocks must never be rendered again; code is highlighted
only once its fence closes; hostile HTML, links and TeX stay inert.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.browser

STATIC = Path(__file__).resolve().parents[2] / "nbchat" / "notebook" / "static"
PAGE_URL = "http://127.0.0.1:9/render.html"

HARNESS = """<!doctype html><html><head><style>%(css)s</style></head><body><div id=root></div>
<script type=module>
const mod = await import("data:text/javascript;base64,%(js)s");
const handlers = {};
const state = {messages: [], transport: "ws", transports: ["ws", "sse"], busy: false, stats: ""};
window.model = {sent: [], get: (k) => state[k], set: (k, v) => { state[k] = v; }, save_changes() {},
  send(m) { this.sent.push(m); }, on(n, f) { (handlers[n] ||= []).push(f); }, off() {}};
window.emit = (n, m) => (handlers[n] || []).forEach((f) => f(m));
window.frame = () => new Promise((done) => requestAnimationFrame(() => requestAnimationFrame(done)));
window.view = () => document.querySelector(".nbchat-widget").nbchatView;
window.last = () => [...document.querySelectorAll(".nbchat-assistant")].pop();
// The rendered text of a message wherever it is scrolled: a chunk out of view is skipped by
// content-visibility, and innerText leaves skipped content out.
window.shownText = (el) => {
  el.querySelectorAll(".nbchat-chunk").forEach((c) => { c.style.contentVisibility = "visible"; });
  return el.innerText; };
mod.default.render({model: window.model, el: document.getElementById("root")});
window.ready = true;
</script></body></html>"""

MARKDOWN = ("# Notes\n\nSome **bold** and *soft* text with `code <b>` and a [link](https://example.com).\n\n"
            "```python\nprint('<b>hi</b>')\nx = 1\n```\n\n- one\n- two\n\n1. first\n2. second\n\n> quoted\n\n"
            "<img src=x onerror=\"window.__xss=1\"> [bad](javascript:alert(1))\n")

# Math in the four delimiters, code in two languages, a table, a nested list, and prices that stay text.
ANSWER = r"""## Euler and a loop

The identity $e^{i\pi} + 1 = 0$ links five constants; \(a^2 + b^2 = c^2\) is older. It costs $5 and $6.

$$
\int_0^1 x^2\,dx = \frac{1}{3}
$$

```python
def square(x: int) -> int:
    # a comment <b>
    return x ** 2  # "$x$" stays code
```

\[ \sum_{k=1}^{n} k = \frac{n(n+1)}{2} \]

| n | square |
|---|-------:|
| 2 | $4$ |

1. first
   - nested *item*
2. second

```js
const s = "<script>";
```
Done: `x ** 2` is **fast**."""


def open_harness(context: Any, css: str) -> Any:
    """The harness at a loopback URL (a secure context, as JupyterLab's pages are: the Clipboard API needs one),
    answered by Playwright itself: nothing listens on the port."""
    tab = context.new_page()
    js = base64.b64encode((STATIC / "widget.js").read_bytes()).decode()
    html = HARNESS % {"js": js, "css": css}
    tab.route(PAGE_URL, lambda route: route.fulfill(body=html, content_type="text/html; charset=utf-8"))
    tab.goto(PAGE_URL)
    tab.wait_for_function("() => window.ready === true")
    return tab


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    """The widget's front end alone in a page, with a stand-in model: no JupyterLab, no kernel."""
    context = browser.new_context(viewport={"width": 900, "height": 1100})
    errors: list[str] = []
    context.on("weberror", lambda error: errors.append(str(error.error)))
    tab = open_harness(context, (STATIC / "widget.css").read_text(encoding="utf-8"))
    yield tab
    context.close()
    assert not errors, errors


def stream_into(page: Any, text: str, piece: int) -> None:
    page.evaluate("() => emit('msg:custom', {type: 'start', user: 'q'})")
    page.evaluate("([text, n]) => { for (let i = 0; i < text.length; i += n)"
                  " emit('msg:custom', {type: 'delta', text: text.slice(i, i + n)}); }", [text, piece])
    page.evaluate("() => frame()")
    page.evaluate("() => emit('msg:custom', {type: 'end', status: '[DONE]'})")


def one_shot(page: Any, text: str) -> str:
    """The answer drawn at once from the saved history, as a reopened notebook draws it."""
    html: str = page.evaluate(
        "(text) => { model.set('messages', [{role: 'user', content: 'q'}, {role: 'assistant', content: text,"
        " status: '[DONE]'}]); view().log.replaceChildren(); emit('change:messages');"
        " return last().innerHTML; }", text)
    return html


def test_streamed_markdown_renders_like_the_whole_and_stays_inert(page: Any) -> None:
    rendered = []
    for piece in (1, 3, 7, len(MARKDOWN)):
        stream_into(page, MARKDOWN, piece)
        rendered.append(page.evaluate("() => last().innerHTML"))
    assert len(set(rendered)) == 1, rendered  # however the text was split, the result is the same
    html = rendered[0]
    assert html == one_shot(page, MARKDOWN)
    for expected in ("<h1>Notes</h1>", "<strong>bold</strong>", "<em>soft</em>", "<code>code &lt;b&gt;</code>",
                     '<code class="language-python nbchat-highlighted"><span class="tok-variableName">print</span>',
                     '<span class="tok-string">\'&lt;b&gt;hi&lt;/b&gt;\'</span>',
                     "<li>one</li>", "<ol><li>first</li>", "<blockquote><p>quoted</p></blockquote>",
                     '<a href="https://example.com"', "&lt;img src=x", "[bad](javascript:alert(1))"):
        assert expected in html, (expected, html)
    assert page.evaluate("() => last().querySelector('pre code').textContent") == "print('<b>hi</b>')\nx = 1\n"
    assert page.evaluate("() => document.querySelectorAll('#root img, #root script').length") == 0
    assert page.evaluate("() => window.__xss") is None


def test_math_and_code_split_at_every_character_render_like_the_whole(page: Any, docs_img: Path) -> None:
    # Every prefix of the answer is drawn (one delta per character, a render after each), recording
    # where the highlighted code blocks are not exactly those whose closing fence line is complete.
    early: list[int] = page.evaluate("""(text) => {
        emit('msg:custom', {type: 'start', user: 'q'});
        const md = view().live.md, early = [];
        for (let i = 0; i < text.length; i++) {
          emit('msg:custom', {type: 'delta', text: text[i]});
          md.render();
          // the answer's openers carry a language, so a bare ``` line ended by a newline is a closed fence
          const closed = (text.slice(0, i + 1).match(/^```[ \\t]*\\n/gm) || []).length;
          if (last().querySelectorAll('code.nbchat-highlighted').length !== closed) early.push(i);
        }
        emit('msg:custom', {type: 'end', status: '[DONE]'});
        return early; }""", ANSWER)
    assert early == [], early
    streamed = page.evaluate("() => last().innerHTML")
    whole = one_shot(page, ANSWER)
    assert streamed == whole
    counts = page.evaluate("""() => ({
        katex: last().querySelectorAll('.katex').length,
        display: last().querySelectorAll('.katex-display').length,
        errors: last().querySelectorAll('.katex-error').length,
        highlighted: last().querySelectorAll('code.nbchat-highlighted').length,
        keywords: [...last().querySelectorAll('.tok-keyword')].map((e) => e.textContent),
        copy: last().querySelectorAll('.nbchat-code > button.nbchat-copy').length,
        cells: [...last().querySelectorAll('table td')].map((e) => e.textContent.length > 0),
        nested: last().querySelectorAll('ol > li > ul > li em').length,
        text: shownText(last()) })""")
    # inline $…$ and \(…\), display $$…$$ and \[…\], and $4$ in the table
    assert counts["katex"] == 5 and counts["display"] == 2 and counts["errors"] == 0, counts
    assert counts["highlighted"] == 2 and counts["copy"] == 2, counts
    assert {"def", "return", "const"} <= set(counts["keywords"]), counts
    assert counts["nested"] == 1 and all(counts["cells"]), counts
    assert "It costs $5 and $6." in counts["text"], counts["text"]  # prices are not math
    assert "\"$x$\" stays code" in counts["text"] and "<script>" in counts["text"]
    page.add_style_tag(content=".nbchat-log { max-height: none; }")  # the whole answer in the picture
    page.locator(".nbchat-widget").screenshot(path=str(docs_img / "widget-render-page.png"))


def test_code_is_plain_until_its_fence_closes(page: Any) -> None:
    page.evaluate("() => emit('msg:custom', {type: 'start', user: 'q'})")
    states = []
    for piece in ("```python\n", "def f():\n", "    return 1\n", "``", "`", "\n", "after\n"):
        page.evaluate("(p) => { emit('msg:custom', {type: 'delta', text: p}); view().live.md.render(); }", piece)
        states.append(page.evaluate("() => [last().querySelectorAll('.tok-keyword').length,"
                                    " last().querySelectorAll('.nbchat-copy').length]"))
    page.evaluate("() => emit('msg:custom', {type: 'end', status: '[DONE]'})")
    # plain monospace (no token spans, no copy button) until the closing fence's line is complete
    assert states == [[0, 0], [0, 0], [0, 0], [0, 0], [0, 0], [2, 1], [2, 1]], states


def test_finished_blocks_are_never_rendered_again(page: Any) -> None:
    page.evaluate("() => emit('msg:custom', {type: 'start', user: 'q'})")
    page.evaluate("() => emit('msg:custom', {type: 'delta', text: 'First paragraph.\\n\\nSecond'}) || frame()")
    page.evaluate("() => frame()")
    page.evaluate("() => { window.first = [...document.querySelectorAll('.nbchat-assistant p')].at(-2); }")
    # Count the DOM nodes each batch creates (deterministic, unlike timings on a shared machine): re-rendering
    # the whole answer per frame would create ever more nodes per batch as the answer grows.
    page.evaluate("""() => { window.made = 0;
        for (const name of ['createElement', 'createTextNode']) { const original = document[name].bind(document);
          document[name] = (...args) => { window.made++; return original(...args); }; } }""")
    made = []
    for _ in range(6):  # 6 x 400 more paragraphs
        made.append(page.evaluate("async () => { window.made = 0; for (let i = 0; i < 400; i++)"
                                  " emit('msg:custom', {type: 'delta', text: ` more text ${i}.\\n\\nNext`});"
                                  " await frame(); return window.made; }"))
    assert page.evaluate("() => window.first.isConnected && window.first.textContent") == "First paragraph."
    page.evaluate("() => emit('msg:custom', {type: 'end', status: '[DONE]'})")
    assert page.evaluate("() => last().querySelectorAll('p').length") == 2402
    assert max(made) <= 1.1 * min(made) and max(made) < 2_000, made  # ~2 nodes per new paragraph, flat


def test_a_relayed_stop_is_shown_and_repeated_until_the_kernel_ends_the_turn(page: Any) -> None:
    page.evaluate("() => { model.set('busy', true); emit('change:busy');"
                  " emit('msg:custom', {type: 'start', user: 'q'});"
                  " emit('msg:custom', {type: 'delta', text: 'Once upon a time'}); }")
    page.evaluate("() => frame()")
    stop = page.locator(".nbchat-stop")
    assert stop.is_enabled()
    stop.click()
    stats = page.locator(".nbchat-stats")
    assert stop.is_disabled() and stats.inner_text().endswith("stopping…"), stats.inner_text()
    page.evaluate("() => emit('msg:custom', {type: 'delta', text: ' there was'}) || frame()")
    page.evaluate("() => frame()")
    assert stats.inner_text().endswith("stopping…")  # the progress line keeps saying it while the answer ends
    # the kernel has not ended the turn: the Stop goes again (a lost message cannot keep the turn running)
    page.wait_for_function("() => model.sent.filter((m) => m.type === 'stop').length >= 2", timeout=5_000)
    page.evaluate("() => { emit('msg:custom', {type: 'end', status: '[INTERRUPTED]'}); model.set('busy', false);"
                  " emit('change:busy'); }")
    sent = page.evaluate("() => model.sent.filter((m) => m.type === 'stop').length")
    page.wait_for_timeout(2_500)  # one resend period: nothing more once the turn is over
    assert page.evaluate("() => model.sent.filter((m) => m.type === 'stop').length") == sent
    assert stop.is_disabled() and page.locator(".nbchat-send").is_enabled()
    assert page.locator(".nbchat-status").inner_text() == "[INTERRUPTED]"


def test_hostile_links_images_and_tex_stay_inert(page: Any) -> None:
    hostile = (r"$\href{javascript:window.__xss=3}{click}$ and $\url{javascript:alert(1)}$ and "
               r"$\htmlClass{x}{y}$ \(\includegraphics{https://example.com/x.png}\)" "\n\n"
               "![pic](https://example.com/x.png) [js](javascript:window.__xss=4) [data](data:text/html,hi) "
               "<https://example.com/auto> <javascript:alert(1)>\n\n```html\n<script>window.__xss=5</script>\n```\n")
    stream_into(page, hostile, 2)
    found = page.evaluate("""() => ({
        hrefs: [...last().querySelectorAll('a')].map((a) => a.getAttribute('href')),
        loaded: last().querySelectorAll('img, script, iframe, object, embed').length,
        text: shownText(last()) })""")
    assert found["hrefs"] == ["https://example.com/x.png", "https://example.com/auto"], found
    assert found["loaded"] == 0 and page.evaluate("() => window.__xss") is None, found
    assert "<script>window.__xss=5</script>" in found["text"] and "[js](javascript:" in found["text"]


def test_copy_button_puts_the_code_text_on_the_clipboard(browser: Any) -> None:
    context = browser.new_context(permissions=["clipboard-read", "clipboard-write"])
    try:
        tab = open_harness(context, "")
        stream_into(tab, "Run:\n\n```python\nprint('<b>hi</b>')  # ok\n```\n", 5)
        tab.locator(".nbchat-copy").click()
        tab.wait_for_function("() => document.querySelector('.nbchat-copy').textContent === 'Copied'")
        assert tab.evaluate("() => navigator.clipboard.readText()") == "print('<b>hi</b>')  # ok\n"
    finally:
        context.close()
