// The direct page's stats line: the same format as the kernel's (nbchat/notebook/turn.py stats_line),
// the trimmed history included, read from the first chunk record's "trimmed" field.

import assert from "node:assert/strict";
import { test } from "node:test";

import CONTRACT from "../../nbchat/notebook/js/contract.js";
import { DirectTurn } from "../../nbchat/notebook/js/direct.js";
import { statsLine, trimmedNote } from "../../nbchat/notebook/js/metrics.js";
import { FakeServer, run } from "./fake_net.mjs";

const { paths: PATHS, statuses: STATUS } = CONTRACT;
const TEXT = "An answer to a long conversation, streamed by the page. ";

test("the note reads as the kernel's", () => {
  assert.equal(trimmedNote(1), "history trimmed: 1 exchange");
  assert.equal(trimmedNote(8), "history trimmed: 8 exchanges");
  assert.equal(statsLine("ws direct · [DONE]", null), "ws direct · [DONE]");
  assert.equal(statsLine("ws direct · [ERROR]", "boom"), "ws direct · [ERROR] · boom");
});

for (const transport of CONTRACT.directTransports) {
  test(`${transport}: a trimmed history shows after the status, once`, async () => {
    const server = new FakeServer(TEXT);
    server.records[0].trimmed = 3; // the server says it on the first chunk only
    const end = await run(DirectTurn, server, transport);
    assert.equal(end.status, STATUS.DONE);
    assert.equal(end.text, TEXT);
    assert.ok(end.stats.endsWith(" · [DONE] · history trimmed: 3 exchanges"), end.stats);
    assert.equal(end.stats.split("history trimmed").length, 2);
  });
}

test("an untrimmed turn says nothing of it", async () => {
  const end = await run(DirectTurn, new FakeServer(TEXT), "sse");
  assert.ok(end.stats.endsWith(" · [DONE]"), end.stats);
});

test("the server's error goes with the status, the page's own after the figures", async () => {
  const server = new FakeServer(TEXT, { status: STATUS.ERROR, error: { code: "backend_error", message: "the model died" } });
  server.records[0].trimmed = 1;
  const failed = await run(DirectTurn, server, "stream");
  assert.ok(failed.stats.endsWith(" · [ERROR] backend_error: the model died · history trimmed: 1 exchange"), failed.stats);
  const refused = await run(DirectTurn, new FakeServer(TEXT, { answer: {
    [`POST ${PATHS.turns}`]: () => Response.json({ error: { code: "unauthorized", message: "bad token" } }, { status: 401 }) } }), "ws");
  assert.ok(refused.stats.endsWith(` · [ERROR] · POST ${PATHS.turns} answered 401: bad token`), refused.stats);
});
