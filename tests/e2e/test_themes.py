"""Every text nbchat shows is readable in JupyterLab Light and Dark: contrast from the computed colours.

JupyterLab runs a notebook with a ``ChatWidget`` holding a finished, an
interrupted and a failed turn (code with every kind of token, math, a table, a
quote, a link), a ``%%chat`` answer and a live ``%%chat`` view. For each theme
(switched with JupyterLab's ``apputils:change-theme``) the page computes, for
every element with text of its own (and placeholders, and text drawn by
``::before``/``::after``), the contrast of its colour against the background
it is drawn on, composited up the tree with opacities, as WCAG defines it.
Disabled controls are left out, as WCAG leaves them out. Screenshots of both
themes go to ``docs/img/`` when ``NBCHAT_DOCS_IMG=1``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from nbchat.bench.longpage import Lab, open_notebook, run_cell, write_notebook

pytestmark = [pytest.mark.e2e, pytest.mark.slow, pytest.mark.browser]

AA = 4.5

RICH = r"""Here is **bold**, *emphasis*, `inline code`, a [link](https://example.org) and $x^2 + \alpha$.

```python
import math

class Box:
    '''A box.'''
    def area(self, w: float = 2.5, flag: bool = True) -> float | None:
        # a comment
        return math.pi * w ** 2 if flag else None  # 42
```

$$\int_0^1 t^2\,dt = \frac{1}{3}$$

| name | value |
|---|---:|
| one | 1 |

> A quote, and a list:

- first
- second
"""

CELLS = [
    "%load_ext nbchat",
    "from nbchat import ChatWidget\nfrom nbchat.notebook.conversation import Conversation\n"
    "from nbchat.server.config import Settings\nfrom nbchat.server.serving import start_server_thread\n"
    "from nbchat.notebook.live import StreamView\n"
    f"RICH = {RICH!r}\n"
    "echo = start_server_thread(Settings(port=0, backend='echo', rate=0))\n"
    "conv = Conversation()\n"
    "conv.record('Show me some code and math, please.', RICH, '[DONE]')\n"
    "conv.record('And a story?', 'Once upon a time', '[INTERRUPTED]')\n"
    "w = ChatWidget(conv, server='http://127.0.0.1:9', token='x')\nw",
    "w.ask('this server is not there');",
    "%%chat --server {echo.url} --token {echo.token}\n{RICH}",
    "live = StreamView(widget=True)\nlive.start()\nlive.add(RICH)",
]
LOAD, WIDGET, FAIL, CHAT, LIVE = range(len(CELLS))

# For each text: its colour and the background under it (both composited to opaque), and their contrast.
CONTRAST = r"""(cells) => {
  const canvas = document.createElement('canvas'); canvas.width = canvas.height = 1;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const rgba = (css) => { ctx.clearRect(0, 0, 1, 1); ctx.fillStyle = '#000'; ctx.fillStyle = css;
    ctx.fillRect(0, 0, 1, 1); const [r, g, b, a] = ctx.getImageData(0, 0, 1, 1).data; return [r, g, b, a / 255]; };
  const over = (top, under) => { const a = top[3]; return [0, 1, 2].map((i) => top[i] * a + under[i] * (1 - a)); };
  const lum = (c) => { const [r, g, b] = c.map((v) => { v /= 255; return v <= 0.04045 ? v / 12.92
    : ((v + 0.055) / 1.055) ** 2.4; }); return 0.2126 * r + 0.7152 * g + 0.0722 * b; };
  const ratio = (a, b) => { const [x, y] = [lum(a), lum(b)].sort((p, q) => q - p); return (x + 0.05) / (y + 0.05); };
  const opacity = (el) => { let o = 1; for (let e = el; e; e = e.parentElement) o *= +getComputedStyle(e).opacity;
    return o; };
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c[3] > 0) layers.push(c);
      if (c[3] >= 1) break;
    }
    let color = [255, 255, 255];
    for (const layer of layers.reverse()) color = over(layer, color);
    return color;
  };
  const hidden = '.katex-mathml, mjx-assistive-mml, .MJX_Assistive_MathML';
  const out = [];
  const check = (el, color, what, cell) => {
    const bg = background(el);
    const fg = rgba(color);
    const text = over([fg[0], fg[1], fg[2], fg[3] * opacity(el)], bg);
    out.push({cell, what, ratio: Math.round(ratio(text, bg) * 100) / 100, color, bg: `rgb(${bg.map(Math.round)})`,
              cls: (el.className && el.className.baseVal === undefined ? el.className : el.tagName).toString()});
  };
  const nb = jupyterapp.shell.currentWidget.content;
  for (const i of cells) {
    for (const el of nb.widgets[i].node.querySelectorAll('.jp-OutputArea *')) {
      if (el.closest(hidden) || el.disabled || !el.getClientRects().length) continue;
      const style = getComputedStyle(el);
      if (style.visibility === 'hidden' || style.display === 'none') continue;
      const own = [...el.childNodes].some((n) => n.nodeType === 3 && n.textContent.trim());
      if (own || el.tagName === 'SELECT') check(el, style.color, (el.textContent || el.value).trim().slice(0, 40), i);
      if (el.placeholder) check(el, getComputedStyle(el, '::placeholder').color, 'placeholder', i);
      for (const pseudo of ['::before', '::after']) {
        const p = getComputedStyle(el, pseudo);
        if (/[A-Za-z]/.test(p.content) && p.content !== 'none' && p.content !== 'normal') check(el, p.color, pseudo, i);
      }
    }
  }
  return out;
}"""


# The theme is in force once its own text colour is: dark on a light theme, light on a dark one (an element
# coloured by the theme's variable takes its parent's colour until the stylesheet defines it).
THEME_APPLIED = """t => { const body = document.body; if (body.dataset.jpThemeName !== t) return false;
  const probe = document.createElement('div'); probe.style.color = 'var(--jp-ui-font-color0)'; body.appendChild(probe);
  const [r, g, b] = getComputedStyle(probe).color.match(/[\\d.]+/g).map(Number); probe.remove();
  return (r + g + b < 384) === (body.dataset.jpThemeLight === 'true'); }"""


def switch_theme(tab: Any, theme: str) -> None:
    tab.evaluate("t => jupyterapp.commands.execute('apputils:change-theme', {theme: t})", theme)
    tab.wait_for_function(THEME_APPLIED, arg=theme, timeout=30_000)


def test_every_text_is_readable_in_light_and_dark(lab: Lab, browser: Any, docs_img: Path) -> None:
    write_notebook(lab.root / "themes.ipynb", CELLS)
    tab = browser.new_page(viewport={"width": 1100, "height": 2300})
    try:
        open_notebook(tab, lab, "themes.ipynb")
        for index in (LOAD, WIDGET, FAIL, CHAT, LIVE):
            run_cell(tab, index)
        tab.wait_for_function("i => jupyterapp.shell.currentWidget.content.widgets[i].node"
                              ".querySelector('.nbchat-error')", arg=WIDGET, timeout=30_000)
        tab.wait_for_function("i => jupyterapp.shell.currentWidget.content.widgets[i].node"
                              ".querySelectorAll('.nbchat-answer-view .nbchat-code').length === 1", arg=LIVE,
                              timeout=30_000)
        tab.wait_for_function("i => jupyterapp.shell.currentWidget.content.widgets[i].node"
                              ".querySelector('.jp-RenderedMarkdown mjx-container, .jp-RenderedMarkdown .MathJax')",
                              arg=CHAT, timeout=30_000)
        worst: dict[str, Any] = {}
        for theme, name in (("JupyterLab Light", "light"), ("JupyterLab Dark", "dark")):
            switch_theme(tab, theme)
            texts = tab.evaluate(CONTRAST, [WIDGET, CHAT, LIVE])
            kinds = {t["cell"] for t in texts}
            assert kinds == {WIDGET, CHAT, LIVE}, kinds
            assert len(texts) > 40, texts
            low = sorted(texts, key=lambda t: t["ratio"])
            worst[theme] = low[0]
            print(f"\n{theme}: {len(texts)} texts, lowest contrast {low[0]['ratio']}:1 ({low[0]})")
            tab.locator(".jp-Notebook").screenshot(path=str(docs_img / f"theme-{name}.png"))
            failing = [t for t in texts if t["ratio"] < AA]
            assert not failing, f"{theme}: {failing}"
        switch_theme(tab, "JupyterLab Light")  # a setting of the server, which the session's other modules share
    finally:
        tab.close()
