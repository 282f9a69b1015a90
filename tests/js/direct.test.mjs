// DirectTurn's readers against a fake server: each transport opens what its name says, reads records
// split anywhere, resumes after a drop with no gap and no repeat, and ends with the server's status.

import assert from "node:assert/strict";
import { describe, test } from "node:test";

import CONTRACT from "../../nbchat/notebook/js/contract.js";
import { DirectTurn, MAX_RESUMES, transportName } from "../../nbchat/notebook/js/direct.js";
import { BASE, FakeServer, TOKEN, TURN_ID, run } from "./fake_net.mjs";

const { paths: PATHS, statuses: STATUS } = CONTRACT;
const TEXT = "你好，世界! Streaming \"quotes\", emoji 🚀 and a\nsecond line. ";
const LONG = TEXT.repeat(4);
const path = (url) => new URL(url).pathname;
const query = (url) => Object.fromEntries(new URL(url).searchParams);

// A whole turn over a transport that first queues it: the only fetch is POST /turns, naming the page's uid.
async function queuedTurn(transport) {
  const server = new FakeServer(TEXT);
  const end = await run(DirectTurn, server, transport);
  assert.equal(end.status, STATUS.DONE);
  assert.equal(end.text, TEXT);
  assert.deepEqual(server.calls.map(([m, u]) => `${m} ${path(u)}`), [`POST ${PATHS.turns}`]);
  return { server, uid: JSON.parse(server.calls[0][2].body).uid };
}

describe("transport names", () => {
  test("aliases are the fetch stream; the OpenAI route and unknown names are refused", () => {
    assert.equal(transportName("fetch"), "stream");
    assert.equal(transportName("ndjson"), "stream");
    for (const name of CONTRACT.directTransports) assert.equal(transportName(name), name);
    assert.throws(() => transportName("openai"), /cannot stream over "openai": use one of ws, sse, stream/);
    assert.throws(() => transportName("pigeon"), /cannot stream/);
  });
});

describe("stream: fetch POST of the NDJSON path", () => {
  test("opens a fetch stream, never a queued turn or an EventSource", async () => {
    const server = new FakeServer(TEXT);
    const end = await run(DirectTurn, server, "stream");
    assert.equal(end.status, STATUS.DONE);
    assert.equal(end.text, TEXT);
    assert.deepEqual(server.calls.map(([m, u]) => `${m} ${path(u)}`), [`POST ${PATHS.ndjson}`]);
    const [, , init] = server.calls[0];
    assert.equal(init.headers.token, TOKEN);
    assert.equal(init.headers.Accept, "text/event-stream"); // what makes jupyter-server-proxy stream it
    assert.equal(JSON.parse(init.body).userMessage.content, "hi");
    assert.equal(server.sources.length + server.sockets.length, 0);
    assert.equal(end.turn.id, TURN_ID); // from the turn header: what a resume or an interrupt names
  });

  test("records split at every byte come out whole, multi-byte characters too", async () => {
    const size = new FakeServer(TEXT).ndjson(0).length;
    for (let cut = 1; cut < size; cut++) {
      const end = await run(DirectTurn, new FakeServer(TEXT, { split: () => [cut] }), "stream");
      assert.equal(end.text, TEXT, `split at byte ${cut}`);
      assert.equal(end.status, STATUS.DONE);
    }
    const bytewise = await run(DirectTurn, new FakeServer(TEXT, { split: (n) => [...Array(n).keys()] }), "fetch");
    assert.equal(bytewise.text, TEXT);
    assert.equal(bytewise.metrics.summary().chunks, new FakeServer(TEXT).records.length);
  });

  test("a drop anywhere resumes with GET ?turn=&after= and nothing lost or repeated", async () => {
    const size = new FakeServer(LONG).ndjson(0).length;
    for (const drop of [1, 17, Math.floor(size / 3), Math.floor(size / 2) + 5, size - 3]) {
      for (const overlap of [0, 2]) { // an overlapping resume repeats records the page has: it must skip them
        const server = new FakeServer(LONG, { dropAfter: [drop], overlap, split: (n) => [...Array(n).keys()].filter((i) => i % 7 === 0) });
        const end = await run(DirectTurn, server, "stream");
        assert.equal(end.status, STATUS.DONE, `drop at ${drop}`);
        assert.equal(end.text, LONG, `drop at byte ${drop}, overlap ${overlap}`);
        assert.equal(end.metrics.resumes, 1);
        const [method, url] = server.calls[1];
        assert.equal(`${method} ${path(url)}`, `GET ${PATHS.ndjson}`);
        const q = query(url);
        assert.equal(q.turn, TURN_ID);
        assert.equal(q.token, TOKEN);
        const whole = new TextDecoder().decode(new FakeServer(LONG).ndjson(0).slice(0, drop)).split("\n").length - 1;
        assert.equal(Number(q.after), whole, "the resume names the last record read whole");
      }
    }
  });

  test("every status ends the turn as the server says", async () => {
    for (const status of Object.values(STATUS)) {
      const end = await run(DirectTurn, new FakeServer(TEXT, { status }), "stream");
      assert.equal(end.status, status);
      assert.equal(end.text, TEXT);
    }
  });

  test("an error record comes out as the turn's error", async () => {
    const end = await run(DirectTurn, new FakeServer(TEXT, { status: STATUS.ERROR,
      error: { code: "backend_error", message: "the model died" } }), "stream");
    assert.equal(end.status, STATUS.ERROR);
    assert.equal(end.error, "the model died");
  });

  test("a refused request, an expired turn, a buffered body and a bad record end with [ERROR] and why", async () => {
    const refused = await run(DirectTurn, new FakeServer(TEXT, { answer: {
      [`POST ${PATHS.ndjson}`]: () => Response.json({ error: { code: "unauthorized", message: "bad token" } }, { status: 401 }) } }), "stream");
    assert.equal(refused.status, STATUS.ERROR);
    assert.equal(refused.error, `${PATHS.ndjson} answered 401: bad token`);

    const expired = new FakeServer(LONG, { dropAfter: [40], answer: {
      [`GET ${PATHS.ndjson}`]: () => new Response(null, { status: 204 }) } });
    const gone = await run(DirectTurn, expired, "stream");
    assert.equal(gone.status, STATUS.ERROR);
    assert.match(gone.error, /expired before it could be resumed/);

    const buffered = new FakeServer(TEXT, { answer: { [`POST ${PATHS.ndjson}`]: () => new Response("{}\n",
      { headers: { "Content-Length": "3", [CONTRACT.turnHeader]: TURN_ID } }) } });
    const whole = await run(DirectTurn, buffered, "stream");
    assert.match(whole.error, /buffered the fetch stream into one response/);
    assert.ok(buffered.calls.some(([m, u]) => m === "POST" && path(u) === PATHS.interrupt.replace("{turn_id}", TURN_ID)));

    const garbled = new FakeServer(TEXT, { answer: { [`POST ${PATHS.ndjson}`]: () => new Response("{\"content\": \"a\", \"seq\": 1}\nnot json\n",
      { headers: { [CONTRACT.turnHeader]: TURN_ID } }) } });
    const bad = await run(DirectTurn, garbled, "stream");
    assert.equal(bad.status, STATUS.ERROR);
    assert.equal(bad.text, "a");
    assert.match(bad.error, /not JSON: not json/);
  });

  test("a refused cross-origin request says which origin to admit", async () => {
    const server = new FakeServer(TEXT, { answer: { [`POST ${PATHS.ndjson}`]: () => { throw new TypeError("Failed to fetch"); } } });
    const end = await run(DirectTurn, server, "stream");
    assert.match(end.error, /Failed to fetch: .*--allow-origin http:\/\/page:8888/);
  });
});

describe("ws: a queued turn, then a WebSocket", () => {
  test("POST /turns with the page's uid, then the socket on the WebSocket path starts it", async () => {
    const { server, uid } = await queuedTurn("ws");
    const [socket] = server.sockets;
    assert.equal(path(socket.url), PATHS.websocket.replace("{uid}", uid));
    assert.equal(query(socket.url).token, TOKEN);
    assert.ok(socket.url.startsWith("ws://"));
    assert.deepEqual(socket.sent, [""]);
  });

  test("a dropped socket resumes after the last seq with nothing lost or repeated", async () => {
    for (const overlap of [0, 3]) {
      const server = new FakeServer(LONG, { dropAfter: [11, 30], overlap });
      const end = await run(DirectTurn, server, "ws");
      assert.equal(end.text, LONG);
      assert.equal(end.status, STATUS.DONE);
      assert.equal(end.metrics.resumes, 2);
      const resume = JSON.parse(server.sockets[1].sent[0])[CONTRACT.resumeKey];
      assert.deepEqual(resume, { after: 11, turn: TURN_ID });
    }
  });

  test("every status ends the turn; Stop sends the interrupt frame", async () => {
    for (const status of Object.values(STATUS)) assert.equal((await run(DirectTurn, new FakeServer(TEXT, { status }), "ws")).status, status);
    const server = new FakeServer(LONG);
    const end = await run(DirectTurn, server, "ws", { before: (turn) => { turn.stopping = true; } });
    assert.ok(server.sockets[0].sent.includes(CONTRACT.interruptFrame));
    assert.equal(end.status, STATUS.INTERRUPTED);
  });

  test("a refused queue ends with [ERROR] and the server's reason", async () => {
    const server = new FakeServer(TEXT, { answer: { [`POST ${PATHS.turns}`]: () => Response.json(
      { error: { code: "bad_request", message: "temperature must be 0..2" } }, { status: 400 }) } });
    const end = await run(DirectTurn, server, "ws");
    assert.equal(end.error, `POST ${PATHS.turns} answered 400: temperature must be 0..2`);
    assert.equal(server.sockets.length, 0);
  });

  test(`gives up after ${MAX_RESUMES} resumes that bring nothing`, async () => {
    const server = new FakeServer(LONG, { dropAfter: Array(MAX_RESUMES + 1).fill(0) });
    const end = await run(DirectTurn, server, "ws");
    assert.equal(end.status, STATUS.ERROR);
    assert.match(end.error, /dropped \(WebSocket closed with 1006\) and did not come back/);
    assert.equal(server.sockets.length, MAX_RESUMES + 1);
  });
});

describe("sse: a queued turn, then an EventSource", () => {
  test("POST /turns, then EventSource on the SSE path by uid", async () => {
    const { server, uid } = await queuedTurn("sse");
    assert.equal(path(server.sources[0].url), PATHS.sse);
    assert.deepEqual(query(server.sources[0].url), { uid, token: TOKEN });
  });

  test("an error resumes with ?turn=&lastEventId= and nothing lost or repeated", async () => {
    for (const overlap of [0, 2]) {
      const server = new FakeServer(LONG, { dropAfter: [9], overlap });
      const end = await run(DirectTurn, server, "sse");
      assert.equal(end.text, LONG);
      assert.equal(end.metrics.resumes, 1);
      assert.deepEqual(query(server.sources[1].url), { turn: TURN_ID, lastEventId: "9", token: TOKEN });
      assert.ok(server.sources[0].closed); // the page resumes itself: EventSource's own retry is stopped
    }
  });

  test("every status ends the turn; an error record is the turn's error; Stop posts the interrupt", async () => {
    for (const status of Object.values(STATUS)) assert.equal((await run(DirectTurn, new FakeServer(TEXT, { status }), "sse")).status, status);
    const failed = await run(DirectTurn, new FakeServer(TEXT, { status: STATUS.ERROR, error: { code: "x", message: "boom" } }), "sse");
    assert.equal(failed.error, "boom");
    const server = new FakeServer(TEXT);
    await run(DirectTurn, server, "sse", { before: (turn) => turn.stop() }); // Stop before the turn has an id
    assert.ok(server.calls.some(([m, u]) => m === "POST" && path(u) === PATHS.interrupt.replace("{turn_id}", TURN_ID)));
  });
});

test("requests go to the route's base with its headers (Jupyter's proxy)", async () => {
  const server = new FakeServer(TEXT);
  const turn = new DirectTurn({ where: { base: `${BASE}/proxy/9999`, route: "proxy", headers: { "X-XSRFToken": "x" } },
    token: TOKEN, transport: "stream", net: server.net, request: {}, onChunk() {}, onEnd() {} });
  assert.equal(turn.url(PATHS.sse, { a: "b" }), `${BASE}/proxy/9999${PATHS.sse}?a=b&token=${TOKEN}`);
  assert.deepEqual(turn.headers({}), { "X-XSRFToken": "x", token: TOKEN });
});
