// Where a direct widget's page sends its requests, and, on a JupyterHub, how it signs in to the Hub's
// nbchat service with the user's Hub login and streams with no token on any request.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import CONTRACT from "../../nbchat/notebook/js/contract.js";
import { DirectTurn } from "../../nbchat/notebook/js/direct.js";
import { resolveRoute, signIn } from "../../nbchat/notebook/js/route.js";
import { FakeServer, run } from "./fake_net.mjs";

const { paths: PATHS, statuses: STATUS } = CONTRACT;
const HUB = "http://hub.example:8000"; // the proxy's origin, as the page was served from it
const PREFIX = "/services/nbchat";
const TEXT = "an answer from the Hub's service 🚀";
const KERNEL_TOKEN = "the-kernels-hub-token";
const page = (config = { baseUrl: "/user/alice/", hubPrefix: "/hub/" }) =>
  ({ config, origin: HUB, cookie: (name) => (name === "_xsrf" ? "xsrf-value" : null) });
// The kernel's endpoint for a Hub's service, as direct.py's page_endpoint makes it: no token, the service's path.
const hubEndpoint = { url: "http://127.0.0.1:8000/services/nbchat", token: "", hub: true, path: PREFIX, port: 8000,
                      loopback: true, proxy: true };

// A response as fetch gives it after following redirects: `url` is where it landed.
function landed(url, body, status = 200) {
  const res = typeof body === "string" ? new Response(body, { status, headers: { "Content-Type": "text/html" } })
    : Response.json(body, { status });
  Object.defineProperty(res, "url", { value: url });
  return res;
}

// A Hub's service: its root answers who the user is, as it does once the login cookie is set. Each is
// mounted under a path of its own: a page signs in once per service, and these tests want fresh ones.
let services = 0;
function hubService(scenario = {}) {
  let signIns = 0;
  const prefix = `${PREFIX}${++services}`;
  const server = new FakeServer(TEXT, { prefix, ...scenario, answer: {
    "GET /": () => { signIns += 1; return landed(`${HUB}${prefix}/`, { name: "alice", admin: false }); },
    ...scenario.answer } });
  const where = resolveRoute({ ...hubEndpoint, path: prefix }, "auto", page());
  return { server, where, prefix, signIns: () => signIns };
}

describe("routes", () => {
  test("a Hub's service is reached by its path on the page's own origin, with no headers", () => {
    // the kernel's URL may name the proxy by another host (127.0.0.1): the page uses its own origin
    assert.deepEqual(resolveRoute(hubEndpoint, "auto", page()), { base: `${HUB}${PREFIX}`, route: "hub", headers: {} });
    assert.equal(resolveRoute(hubEndpoint, "direct", page(null)).base, `${HUB}${PREFIX}`);
    assert.throws(() => resolveRoute(hubEndpoint, "proxy", page()), /Hub's own proxy: use route='auto'/);
  });

  test("the kernel's own server: direct, or through Jupyter's proxy with Jupyter's credentials", () => {
    const own = { url: "http://127.0.0.1:8765", token: "t", hub: false, path: "", port: 8765, loopback: true, proxy: true };
    assert.deepEqual(resolveRoute(own, "auto", page()),
      { base: `${HUB}/user/alice/proxy/8765`, route: "proxy", headers: { "X-XSRFToken": "xsrf-value" } });
    assert.deepEqual(resolveRoute(own, "direct", page()), { base: own.url, route: "direct", headers: {} });
    assert.deepEqual(resolveRoute({ ...own, proxy: false }, "auto", page()).route, "direct");
    assert.equal(resolveRoute(own, "proxy", page({ baseUrl: "/", token: "jt" })).headers.Authorization, "token jt");
    assert.throws(() => resolveRoute(own, "proxy", page(null)), /needs a page served by Jupyter/);
  });
});

describe("signing in to a Hub's service", () => {
  test("one sign-in per page and service, by a same-origin GET of the service's root", async () => {
    const { server, where: { base }, signIns } = hubService();
    assert.equal(await signIn(base, server.net), "alice");
    assert.equal(await signIn(base, server.net), "alice");
    assert.equal(signIns(), 1);
    const [[method, url, init]] = server.calls;
    assert.equal(`${method} ${url}`, `GET ${base}/`);
    assert.equal(init.credentials, "same-origin");
    assert.equal(await signIn(base, server.net, true), "alice"); // again: the cookie was refused
    assert.equal(signIns(), 2);
  });

  test("where the Hub stops the sign-in, the error says what to do; a failed sign-in is tried again", async () => {
    const stops = [
      [landed(`${HUB}/hub/api/oauth2/authorize`, "<form>Authorize</form>"), /allow the nbchat service .*oauth_no_confirm/],
      [landed(`${HUB}/hub/api/oauth2/authorize`, "Forbidden", 403), /access:services!service=nbchat/],
      [landed(`${HUB}/hub/login`, "<form>Sign in</form>"), /not logged in to the Hub: open http:\/\/hub.example:8000\/services\/nbchat-stops\/ in a new tab/],
      [landed(`${HUB}${PREFIX}-stops/`, "<html>not json</html>"), /answered 200 from \/services\/nbchat-stops\//],
    ];
    const base = `${HUB}${PREFIX}-stops`; // a service of its own: nothing cached
    for (const [answer, why] of stops) {
      let asked = 0;
      const net = { fetch: async () => { asked += 1; return answer.clone ? Object.defineProperty(answer.clone(), "url", { value: answer.url }) : answer; } };
      await assert.rejects(signIn(base, net), why);
      await assert.rejects(signIn(base, net), why);
      assert.equal(asked, 2); // not cached: the next turn tries again
    }
  });
});

describe("streaming from a Hub's service", () => {
  for (const transport of CONTRACT.directTransports) {
    test(`${transport}: signs in first, then streams with no token in any URL or header`, async () => {
      const { server, where, prefix } = hubService();
      const end = await run(DirectTurn, server, transport, { where, token: "" });
      assert.equal(end.status, STATUS.DONE, end.error);
      assert.equal(end.text, TEXT);
      assert.equal(new URL(server.calls[0][1]).pathname, `${prefix}/`); // the sign-in, before anything else
      const urls = [...server.calls.map(([, url]) => url), ...server.sockets.map((s) => s.url),
                    ...server.sources.map((s) => s.url)];
      for (const url of urls) {
        assert.ok(url.replace(/^ws/, "http").startsWith(`${HUB}${prefix}/`), url);
        assert.ok(!new URL(url).searchParams.has("token"), url);
      }
      assert.equal(urls.length, transport === "stream" ? 2 : 3);
      for (const [, , init] of server.calls) {
        const headers = Object.keys(init.headers || {}).map((h) => h.toLowerCase());
        assert.ok(!headers.includes("token") && !headers.includes("authorization"), JSON.stringify(init.headers));
        assert.equal(init.credentials, "same-origin");
      }
      assert.ok(!JSON.stringify(server.calls).includes(KERNEL_TOKEN));
    });
  }

  test("a login cookie the service no longer takes (401) signs in again once and goes on", async () => {
    let refusals = 1;
    const answer = (u, init) => (refusals-- > 0
      ? Response.json({ error: { code: "unauthorized", message: "log in through the Hub" } }, { status: 401 })
      : Response.json({ id: "turn-1", uid: JSON.parse(init.body).uid }));
    const { server, where, signIns } = hubService({ answer: { [`POST ${PATHS.turns}`]: answer } });
    const end = await run(DirectTurn, server, "sse", { where, token: "" });
    assert.equal(end.status, STATUS.DONE, end.error);
    assert.equal(signIns(), 2); // the first, then again after the 401
    const next = await run(DirectTurn, server, "sse", { where, token: "" });
    assert.equal(next.status, STATUS.DONE, next.error);
    assert.equal(signIns(), 2); // the new cookie holds: no sign-in for the next turn
    refusals = 2; // refused after signing in again too: the turn ends with the service's reason
    const failed = await run(DirectTurn, server, "sse", { where, token: "" });
    assert.equal(failed.status, STATUS.ERROR);
    assert.equal(failed.error, `POST ${PATHS.turns} answered 401: log in through the Hub`);
    assert.equal(signIns(), 3);
  });

  test("a sign-in the Hub refuses ends the turn with why, before any request to the service", async () => {
    const { server, where } = hubService({ answer: { "GET /": () => landed(`${HUB}/hub/api/oauth2/authorize`, "no", 403) } });
    const end = await run(DirectTurn, server, "ws", { where, token: "" });
    assert.equal(end.status, STATUS.ERROR);
    assert.match(end.error, /does not let this user use the nbchat service \(403\)/);
    assert.equal(server.calls.length, 1);
    assert.equal(server.sockets.length, 0);
  });
});
