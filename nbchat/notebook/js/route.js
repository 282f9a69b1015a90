// Where a browser-direct widget's page sends its requests, and how it signs in there.
//
// Three routes: "direct", the server's own URL (the page's origin admitted by
// the server); "proxy", Jupyter's /proxy/<port>/ in front of the kernel's
// server, with Jupyter's own credentials; "hub", a JupyterHub's nbchat service
// (the kernel's endpoint is marked `hub`). On a Hub the kernel holds the Hub's
// API token, which acts as its user on the whole Hub: it never reaches the
// page. The page instead reaches the service by the service's path on its own
// origin (through the Hub's proxy, as the page itself was served) and signs in
// with the user's Hub login: a same-origin GET of the service's root goes
// through the Hub's OAuth redirects and comes back with the service's login
// cookie (HTTP-only, on the service's path), which every later request, the
// WebSocket and the EventSource carry by themselves.
//
// No DOM here: the page's config, origin and cookies come in `page` (pageOf()
// reads them in a browser), so node --test can drive it.

// Jupyter's page config: the base URL (/user/NAME/ on a hub) and the token JupyterLab itself uses.
function jupyterConfig(doc) {
  const el = doc.getElementById("jupyter-config-data");
  if (!el) return null;
  try { return JSON.parse(el.textContent); } catch (e) { return null; }
}

function readCookie(doc, name) {
  const m = doc.cookie.match(new RegExp("(?:^|;\\s*)" + name + "=([^;]*)"));
  return m ? decodeURIComponent(m[1]) : null;
}

// What the routes need of the page the widget is shown in.
export function pageOf(doc = globalThis.document, origin = globalThis.location.origin) {
  return { config: jupyterConfig(doc), origin, cookie: (name) => readCookie(doc, name) };
}

// Where the page sends its requests: {base, route, headers}.
export function resolveRoute(endpoint, route, page) {
  if (endpoint.hub) {
    if (route === "proxy") {
      throw new Error("this kernel streams from the JupyterHub's nbchat service, which the page reaches through the "
        + "Hub's own proxy: use route='auto'");
    }
    return { base: new URL(endpoint.path || "/", page.origin).href.replace(/\/$/, ""), route: "hub", headers: {} };
  }
  const { config } = page;
  const proxied = route === "proxy" || (route === "auto" && endpoint.loopback && endpoint.proxy && !!config);
  if (!proxied) return { base: endpoint.url, route: "direct", headers: {} };
  if (!config) throw new Error("route='proxy' needs a page served by Jupyter (no jupyter-config-data here)");
  const baseUrl = new URL(config.baseUrl || "/", page.origin);
  const headers = {};
  // Jupyter's own credentials: its token when the page has one, else the XSRF cookie of the login session.
  if (config.token) headers.Authorization = "token " + config.token;
  const xsrf = page.cookie("_xsrf");
  if (xsrf) headers["X-XSRFToken"] = xsrf;
  return { base: new URL(`proxy/${endpoint.port}`, baseUrl).href.replace(/\/$/, ""), route: "proxy", headers };
}

// The sign-ins in progress or done, by service base: one per page, however many turns and widgets.
const SIGNED_IN = new Map();

// Signs the page in to the Hub's service at `base` (resolves with the Hub's user name), once per page;
// `again` forgets an earlier sign-in (its cookie was refused) and signs in anew.
export function signIn(base, net = globalThis, again = false) {
  if (again) SIGNED_IN.delete(base);
  let pending = SIGNED_IN.get(base);
  if (!pending) {
    pending = signInNow(base, net);
    SIGNED_IN.set(base, pending);
    const tried = pending;
    // a failed sign-in is tried again by the next turn (unless a newer one has taken its place)
    pending.catch(() => { if (SIGNED_IN.get(base) === tried) SIGNED_IN.delete(base); });
  }
  return pending;
}

async function signInNow(base, net) {
  // The service's root is a page: without its cookie it redirects to the Hub's authorize URL, which (the
  // user being logged in to the Hub) redirects to the service's oauth_callback, which sets the cookie and
  // redirects back to the root, which answers who the Hub says the user is. fetch follows it all.
  const res = await net.fetch(`${base}/`, { credentials: "same-origin", headers: { Accept: "application/json" } });
  const service = new URL(`${base}/`).pathname;
  const landed = res.url ? new URL(res.url).pathname : service;
  let who = null;
  if (res.ok && landed.startsWith(service)) {
    try { who = await res.json(); } catch (e) { /* not the service's answer: explained below */ }
  }
  if (who && typeof who.name === "string") return who.name;
  throw new Error(signInRefusal(res.status, landed, base));
}

// Why the sign-in stopped where it did, and what the user (or the Hub's admin) can do.
function signInRefusal(status, landed, base) {
  const open = `open ${base}/ in a new tab once, then Send again`;
  if (status === 403) {
    return `the Hub does not let this user use the nbchat service (${status}): the Hub's admin grants it with `
      + "a role holding access:services!service=nbchat";
  }
  if (/\/oauth2\/authorize$/.test(landed)) {
    return `the Hub asks this user to allow the nbchat service to use their login: ${open} `
      + "(the Hub's admin can skip the question with oauth_no_confirm in the service's entry)";
  }
  if (/\/login$/.test(landed)) return `this page is not logged in to the Hub: ${open}`;
  return `signing in to the nbchat service at ${base}/ answered ${status} from ${landed}: ${open}`;
}
