// Bundles the ChatWidget's front end into ../static/: widget.js (an ES module with
// markdown-it, Lezer and KaTeX inside) and widget.css (KaTeX's styles, its fonts
// inlined as data URLs, then ../widget.css). Nothing is fetched at run time.
//
// The bundle's first line names the libraries' versions and a digest of its
// sources; tests/test_widget_bundle.py checks both, so a source edited without
// rebuilding fails the tests.

import { createHash } from "node:crypto";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

import { build } from "esbuild";

const here = dirname(fileURLToPath(import.meta.url));
const notebook = join(here, "..");
const out = join(notebook, "static");

// Paths relative to nbchat/notebook/, in a fixed order.
export function sources() {
  const js = readdirSync(here).filter((f) => f.endsWith(".js") || f.endsWith(".mjs")).sort().map((f) => `js/${f}`);
  return ["widget.js", "widget.css", "js/package.json", "js/package-lock.json", ...js];
}

function digest(paths) {
  const hash = createHash("sha256");
  for (const path of paths) hash.update(path + "\0").update(readFileSync(join(notebook, path))).update("\0");
  return hash.digest("hex");
}

function versions() {
  const lock = JSON.parse(readFileSync(join(here, "package-lock.json"), "utf8"));
  const wanted = Object.keys(JSON.parse(readFileSync(join(here, "package.json"), "utf8")).dependencies);
  return wanted.map((name) => `${name}@${lock.packages[`node_modules/${name}`].version}`).join(" ");
}

// KaTeX's CSS with only its woff2 fonts (every browser JupyterLab supports reads woff2), inlined.
function katexCss() {
  const dist = join(here, "node_modules", "katex", "dist");
  return readFileSync(join(dist, "katex.min.css"), "utf8")
    .replace(/,\s*url\(fonts\/[\w-]+\.(woff|ttf)\) format\("(woff|truetype)"\)/g, "")
    .replace(/url\(fonts\/([\w-]+\.woff2)\)/g, (_, font) =>
      `url(data:font/woff2;base64,${readFileSync(join(dist, "fonts", font)).toString("base64")})`);
}

const paths = sources();
const header = `nbchat ChatWidget bundle: ${versions()} · sources sha256 ${digest(paths)} (${paths.join(" ")})`;
mkdirSync(out, { recursive: true });
await build({
  entryPoints: [join(notebook, "widget.js")],
  outfile: join(out, "widget.js"),
  bundle: true,
  format: "esm",
  target: "es2022",
  minify: true,
  legalComments: "eof",
  banner: { js: `// ${header}` },
  logLevel: "warning",
});
const css = katexCss();
if (/url\(fonts\//.test(css)) throw new Error("a KaTeX font was left as a file reference");
writeFileSync(join(out, "widget.css"),
  `/* ${header} */\n/* KaTeX ${versions().match(/katex@(\S+)/)[1]} (MIT): */\n${css}\n${readFileSync(join(notebook, "widget.css"), "utf8")}`);
console.log(header);
