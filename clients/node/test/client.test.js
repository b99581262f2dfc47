// The client's rare paths (retries, timeouts, refusals) against a scripted local HTTP server.
// The common path runs against the real service: tests/test_node_client.py runs example.js.
import assert from "node:assert/strict";
import { spawn } from "node:child_process";
import { once } from "node:events";
import { createServer } from "node:http";
import { test } from "node:test";
import { fileURLToPath } from "node:url";

import { BudgetClient, BudgetError, UnavailableError, parseRetryAfter } from "../client.js";

const fast = { backoffMs: 1, maxBackoffMs: 5 };

/**
 * A server that answers the k-th request with answers[k] (the last one repeats); records every
 * request (method, url, headers, body).
 * @param {Array<{status: number, body?: unknown, headers?: Record<string, string>, hang?: boolean}>} answers
 */
async function scripted(answers) {
  const requests = [];
  const server = createServer(async (req, res) => {
    let body = "";
    for await (const chunk of req) body += chunk;
    requests.push({ method: req.method, url: req.url, headers: req.headers, body });
    const answer = answers[Math.min(requests.length, answers.length) - 1];
    if (answer.hang) return; // never answers: the client's timeout must fire
    res.writeHead(answer.status, { "content-type": "application/json", ...answer.headers });
    res.end(answer.body === undefined ? "" : JSON.stringify(answer.body));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  return {
    url: `http://127.0.0.1:${port}`,
    requests,
    close: () => {
      server.closeAllConnections();
      server.close();
    },
  };
}

const unavailable = { status: 503, body: { error: { code: "redis_unavailable", message: "down" } } };
const applied = { report_id: "r", applied: 1, duplicate: false };

test("a report retried after 503s is the same request, report id included", async (t) => {
  const retryNow = { ...unavailable, headers: { "retry-after": "0" } };
  const server = await scripted([unavailable, retryNow, { status: 200, body: applied }]);
  t.after(server.close);
  const client = new BudgetClient(server.url, fast);
  const result = await client.report("run-1", 3, [{ prompt_id: "p", samples: 2, accepted: 1 }]);
  assert.deepEqual(result, applied);
  assert.equal(server.requests.length, 3);
  const bodies = server.requests.map((r) => r.body);
  assert.equal(new Set(bodies).size, 1, "every attempt sends the same body");
  const sent = JSON.parse(bodies[0]);
  assert.match(sent.report_id, /^[0-9a-f-]{36}$/);
  assert.deepEqual(sent.observations, [{ prompt_id: "p", samples: 2, accepted: 1 }]);
  assert.equal(sent.step, 3);
});

test("a 4xx is not retried and carries the service's error", async (t) => {
  const error = {
    code: "invalid_request",
    message: "observations[0].accepted: must be <= samples (2)",
    field: "observations[0].accepted",
    details: [{ field: "observations[0].accepted", rule: "accepted_le_samples", message: "must be <= 2" }],
    request_id: "abc123",
  };
  const server = await scripted([{ status: 422, body: { error } }]);
  t.after(server.close);
  const client = new BudgetClient(server.url, fast);
  const observations = [{ prompt_id: "p", samples: 2, accepted: 3 }];
  const refused = await client.report("run-1", 0, observations).catch((e) => e);
  assert.ok(refused instanceof BudgetError && !(refused instanceof UnavailableError));
  assert.equal(refused.status, 422);
  assert.equal(refused.code, "invalid_request");
  assert.equal(refused.field, "observations[0].accepted");
  assert.equal(refused.details[0].rule, "accepted_le_samples");
  assert.equal(refused.requestId, "abc123");
  assert.match(refused.message, /must be <= samples/);
  assert.equal(server.requests.length, 1);
});

test("persistent 503s give up after the configured attempts", async (t) => {
  const server = await scripted([unavailable]);
  t.after(server.close);
  const client = new BudgetClient(server.url, { ...fast, attempts: 3 });
  const error = await client.allocate("run-1", ["a", "b"], 8).catch((e) => e);
  assert.ok(error instanceof UnavailableError);
  assert.equal(error.status, 503);
  assert.equal(error.code, "redis_unavailable");
  assert.equal(server.requests.length, 3);
});

test("connection refused is retried, then UnavailableError", async () => {
  const server = await scripted([{ status: 200, body: {} }]);
  const url = server.url;
  server.close(); // nothing listens there any more
  const client = new BudgetClient(url, { ...fast, attempts: 2 });
  const error = await client.getRun("run-1").catch((e) => e);
  assert.ok(error instanceof UnavailableError);
  assert.equal(error.status, 0);
  assert.match(error.message, /gave up after 2 attempts/);
});

test("a request that hangs times out and is retried", async (t) => {
  const server = await scripted([{ status: 0, hang: true }, { status: 200, body: applied }]);
  t.after(server.close);
  const client = new BudgetClient(server.url, { ...fast, timeoutMs: 500 });
  const result = await client.report("run-1", 0, [{ prompt_id: "p", samples: 1, accepted: 1 }]);
  assert.equal(result.applied, 1);
  assert.equal(server.requests.length, 2);
  assert.equal(server.requests[0].body, server.requests[1].body);
});

test("Retry-After is honoured, capped by maxBackoffMs", async (t) => {
  const ok = { status: 200, body: applied };
  const server = await scripted([{ ...unavailable, headers: { "retry-after": "0.3" } }, ok]);
  t.after(server.close);
  const started = performance.now();
  await new BudgetClient(server.url, { backoffMs: 1, maxBackoffMs: 5000 }).getRun("r");
  assert.ok(performance.now() - started >= 290, "waited for Retry-After");

  const capped = await scripted([{ ...unavailable, headers: { "retry-after": "120" } }, ok]);
  t.after(capped.close);
  const begin = performance.now();
  await new BudgetClient(capped.url, { backoffMs: 1, maxBackoffMs: 50 }).getRun("r");
  assert.ok(performance.now() - begin < 5000, "a long Retry-After is capped");
});

test("ids are path segments, the token is a bearer header, a 204 is undefined", async (t) => {
  const server = await scripted([{ status: 200, body: {} }, { status: 204 }]);
  t.after(server.close);
  const client = new BudgetClient(`${server.url}/`, { ...fast, token: "s3cret" });
  await client.promptStats("team-a:run 1", "gsm8k/0001?x");
  assert.equal(await client.deleteRun("r"), undefined);
  assert.equal(server.requests[0].url, "/v1/runs/team-a%3Arun%201/prompts/gsm8k%2F0001%3Fx");
  assert.equal(server.requests[0].headers.authorization, "Bearer s3cret");
  assert.equal(server.requests[1].method, "DELETE");
});

test("a top-up sends drawn and drawn_accepted; a plain allocation sends neither", async (t) => {
  const server = await scripted([{ status: 200, body: {} }]);
  t.after(server.close);
  const client = new BudgetClient(server.url, fast);
  await client.allocate("r", ["a", "b"], 6, { step: 2, drawn: [4, 0], drawnAccepted: [1, 0] });
  await client.allocate("r", ["a", "b"], 6);
  const [topUp, plain] = server.requests.map((r) => JSON.parse(r.body));
  assert.deepEqual(topUp, {
    prompt_ids: ["a", "b"], budget: 6, step: 2, drawn: [4, 0], drawn_accepted: [1, 0],
  });
  assert.deepEqual(plain, { prompt_ids: ["a", "b"], budget: 6 });
});

test("an error page that is not JSON still gives a readable error", async (t) => {
  const server = await scripted([{ status: 404, headers: { "content-type": "text/html" } }]);
  t.after(server.close);
  const error = await new BudgetClient(server.url, fast).getRun("r").catch((e) => e);
  assert.ok(error instanceof BudgetError);
  assert.equal(error.status, 404);
  assert.equal(error.code, "");
});

test("parseRetryAfter reads seconds and HTTP dates", () => {
  assert.equal(parseRetryAfter("2"), 2);
  assert.equal(parseRetryAfter(null), null);
  assert.equal(parseRetryAfter("soon"), null);
  const inTwoSeconds = new Date(Date.now() + 2000).toUTCString();
  const seconds = parseRetryAfter(inTwoSeconds);
  assert.ok(seconds !== null && seconds > 0 && seconds <= 2);
});

test("a bad base URL is refused up front", () => {
  assert.throws(() => new BudgetClient("ftp://example.com"), TypeError);
});

test("the example exits 1 when the answers are wrong", async (t) => {
  // A service that answers in the right shapes with the wrong numbers: the example must notice.
  const run = { run_id: "x", config: { strategy: "gvm", max_samples: 32, alpha: 1e-3, beta: 2 } };
  const item = (id) => ({ prompt_id: id, samples: 1, p_hat: 0.5, g_hat: 1, weight: 0.2, reason: "gvm" });
  const allocation = { items: ["hard", "new", "easy", "unsolved", "medium"].map(item), total: 5, budget: 64 };
  const server = createServer(async (req, res) => {
    for await (const _ of req);
    const path = req.url ?? "";
    let body = run;
    if (path.endsWith("/observations")) body = applied;
    else if (path.endsWith("/allocations")) body = allocation;
    else if (path.includes("/prompts/")) body = { samples: 8, accepted: 1, grad_norm_sum: 0 };
    res.writeHead(req.method === "DELETE" ? 204 : 200, { "content-type": "application/json" });
    res.end(req.method === "DELETE" ? "" : JSON.stringify(body));
  });
  server.listen(0, "127.0.0.1");
  await once(server, "listening");
  t.after(() => server.close());
  const { port } = /** @type {import("node:net").AddressInfo} */ (server.address());
  const example = fileURLToPath(new URL("../example.js", import.meta.url));
  // Asynchronously: a blocking spawn would also block the fake server in this process.
  const child = spawn(process.execPath, [example, `http://127.0.0.1:${port}`], { stdio: "pipe" });
  let output = "";
  child.stdout.on("data", (chunk) => (output += chunk));
  child.stderr.on("data", (chunk) => (output += chunk));
  const [code] = await once(child, "exit");
  assert.equal(code, 1, output);
  assert.match(output, /FAIL the whole budget is spent/);
  assert.match(output, /FAIL repeated report id is a duplicate/);
  assert.match(output, /check\(s\) failed/);
});
