"""The widget's committed front-end bundle matches its sources, and needs no network.

``nbchat/notebook/js/build.sh`` bundles ``widget.js``, ``js/*.js`` and the npm
libraries pinned in ``js/package-lock.json`` into ``nbchat/notebook/static/``;
the bundle's first line records the libraries' versions and a SHA-256 digest of
the sources. These tests recompute both, so a source edited without rebuilding
(or a bundle edited by hand) fails here, with no npm needed.
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import nbchat

NOTEBOOK = Path(nbchat.__file__).parent / "notebook"
STATIC = NOTEBOOK / "static"
HEADER = re.compile(r"nbchat ChatWidget bundle: (?P<versions>.+?) · "
                    r"sources sha256 (?P<digest>[0-9a-f]{64}) \((?P<paths>[^)]+)\)")


def header(path: Path) -> re.Match[str]:
    first = path.read_text(encoding="utf-8").split("\n", 1)[0]
    match = HEADER.search(first)
    assert match is not None, f"{path} does not start with the build's header: run nbchat/notebook/js/build.sh"
    return match


def test_bundle_was_built_from_the_sources_as_they_are() -> None:
    found = header(STATIC / "widget.js")
    paths = found["paths"].split()
    modules = sorted(f"js/{p.name}" for p in (NOTEBOOK / "js").iterdir() if p.suffix in (".js", ".mjs"))
    assert paths == ["widget.js", "widget.css", "live.css", "js/package.json", "js/package-lock.json", *modules]
    digest = hashlib.sha256()
    for path in paths:
        digest.update(path.encode() + b"\0" + (NOTEBOOK / path).read_bytes() + b"\0")
    assert found["digest"] == digest.hexdigest(), "a source changed since the bundle was built: run js/build.sh"
    assert header(STATIC / "widget.css").group(0) == found.group(0)  # the CSS comes from the same build


def test_bundle_holds_the_versions_the_sources_declare() -> None:
    declared = json.loads((NOTEBOOK / "js" / "package.json").read_text())["dependencies"]
    locked = json.loads((NOTEBOOK / "js" / "package-lock.json").read_text())["packages"]
    bundled = dict(item.rsplit("@", 1) for item in header(STATIC / "widget.js")["versions"].split())
    assert bundled == declared == {name: locked[f"node_modules/{name}"]["version"] for name in declared}
    assert {"markdown-it", "katex", "@lezer/highlight"} <= set(bundled)


def test_bundle_fetches_nothing_at_run_time() -> None:
    css = (STATIC / "widget.css").read_text(encoding="utf-8")
    urls = re.findall(r"url\(([^)]*)\)", css)
    assert len(urls) >= 20 and all(u.startswith("data:font/woff2;base64,") for u in urls), urls[:3]
    assert "@import" not in css
    js = (STATIC / "widget.js").read_text(encoding="utf-8")
    # minified, its only static imports would start a line; no import() loads code later
    assert not re.search(r"^import\b", js, re.M) and "import(" not in js, "the bundle must import nothing"
    for host in ("cdn.jsdelivr", "unpkg.com", "cdnjs", "esm.sh"):
        assert host not in js and host not in css


def test_the_widget_loads_the_bundle() -> None:
    from nbchat.notebook.widget import ChatWidget

    assert str(ChatWidget._esm) == (STATIC / "widget.js").read_text(encoding="utf-8")
    assert str(ChatWidget._css) == (STATIC / "widget.css").read_text(encoding="utf-8")


def test_the_bundles_wire_contract_is_pythons() -> None:
    """Paths, statuses, frames and transport names in the page are Python's: rebuild when they change."""
    from nbchat.wire.page import page_contract, page_contract_json

    second = (STATIC / "widget.js").read_text(encoding="utf-8").split("\n", 2)[1]
    prefix = "// nbchat wire contract: "
    assert second.startswith(prefix), "the bundle does not carry the wire contract: run nbchat/notebook/js/build.sh"
    assert json.loads(second[len(prefix):]) == page_contract(), "the wire contract changed: run js/build.sh"
    module = (NOTEBOOK / "js" / "contract.js").read_text(encoding="utf-8")
    assert f"export default {page_contract_json()};\n" in module, "js/contract.js is stale: run js/build.sh"


def test_no_wire_name_is_written_out_in_the_page_sources() -> None:
    from nbchat.wire.page import page_contract

    contract = page_contract()
    names = {*contract["paths"].values(), *contract["statuses"].values(), contract["interruptFrame"],
             contract["turnHeader"]}
    sources = [NOTEBOOK / "widget.js", *(p for p in (NOTEBOOK / "js").glob("*.js") if p.name != "contract.js")]
    for path in sources:
        text = path.read_text(encoding="utf-8")
        code = "\n".join(line.split("//", 1)[0] for line in text.splitlines())  # comments may name them
        for name in names:
            assert f'"{name}"' not in code and f"`{name}" not in code and f"{name}`" not in code, (path.name, name)
