// @ts-check
/**
 * A trainer's three calls, from Node, with every answer checked (exit 1 on any mismatch):
 * create a run, report one step's statistics, ask for the next batch's samples per prompt.
 *
 *   node clients/node/example.js [BASE_URL]      (default $GVM_URL or http://127.0.0.1:8000)
 *
 * Uses a fresh run id ($GVM_RUN_ID or a random one) and deletes the run at the end.
 */
import { randomUUID } from "node:crypto";
import { BudgetClient, BudgetError } from "./client.js";

const base = process.argv[2] ?? process.env.GVM_URL ?? "http://127.0.0.1:8000";
const run = process.env.GVM_RUN_ID ?? `node-example-${randomUUID().slice(0, 8)}`;
const client = new BudgetClient(base, { token: process.env.GVM_API_TOKEN });

/** @type {string[]} */
const failures = [];
/**
 * @param {string} name
 * @param {boolean} ok
 * @param {unknown} [got] shown when the check fails
 */
function check(name, ok, got) {
  console.log(`${ok ? "ok  " : "FAIL"} ${name}${ok ? "" : `: got ${JSON.stringify(got)}`}`);
  if (!ok) failures.push(name);
}

/** numpy's rint: round half to even. @param {number} x */
function rint(x) {
  const floor = Math.floor(x);
  const rest = x - floor;
  if (rest !== 0.5) return rest < 0.5 ? floor : floor + 1;
  return floor % 2 === 0 ? floor : floor + 1;
}

/**
 * The published GVM rule (gvm-paper, raw rates, no bounds): w_i = G_i / sqrt(p_i + alpha /
 * p_i^(beta-1)), 0 when p_i or G_i is 0; n = rint(N w / sum w), then +-1 on the largest
 * rounding residuals until the total is N. Written from the paper, independently of the service.
 * @param {{p: number, g: number}[]} rates
 * @param {number} budget
 * @param {number} alpha
 * @param {number} beta
 */
function paperCounts(rates, budget, alpha, beta) {
  const w = rates.map(({ p, g }) => (p > 0 && g > 0 ? g / Math.sqrt(p + alpha / p ** (beta - 1)) : 0));
  const total = w.reduce((a, b) => a + b, 0);
  const scaled = w.map((x) => (x / total) * budget);
  const counts = scaled.map(rint);
  const error = budget - counts.reduce((a, b) => a + b, 0);
  const keys = scaled.map((x, i) => (error > 0 ? counts[i] - x : x - counts[i]));
  const order = keys.map((_, i) => i).sort((i, j) => keys[i] - keys[j]);
  for (const i of order.slice(0, Math.abs(error))) counts[i] += Math.sign(error);
  return { counts, shares: w.map((x) => x / total) };
}

// Step 0 as a trainer saw it: 8 samples per prompt; the gradient norms of the accepted ones.
const observations = [
  { prompt_id: "easy", samples: 8, accepted: 7, grad_norms: [0.5, 0.5, 0.5, 0.5, 0.5, 0.5, 0.5] },
  { prompt_id: "medium", samples: 8, accepted: 4, grad_norms: [1.0, 1.5, 1.0, 0.5] },
  { prompt_id: "hard", samples: 8, accepted: 2, grad_norm_sum: 5.0, grad_norm_count: 2 },
  { prompt_id: "unsolved", samples: 8, accepted: 0 },
];
/** @param {{prompt_id: string, samples: number}[]} items */
const show = (items) => items.map((i) => `${i.prompt_id} ${i.samples}`).join(", ");
/** @param {number[]} xs */
const sum = (xs) => xs.reduce((a, b) => a + b, 0);

try {
  // 1. Create the run: GVM with per-prompt bounds 2..32.
  const created = await client.putRun(run, { strategy: "gvm", min_samples: 2, max_samples: 32 });
  check("run created with the config sent", created.config.max_samples === 32, created);

  // 2. Report step 0. The same report id again (a retry) is applied once.
  const reportId = `${run}-step-0`;
  const first = await client.report(run, 0, observations, { reportId });
  check("report applied", first.applied === 4 && !first.duplicate, first);
  const again = await client.report(run, 0, observations, { reportId });
  check("repeated report id is a duplicate", again.applied === 0 && again.duplicate, again);

  // 3. Samples for the next batch (step 1): 64 samples over five prompts, one never seen.
  const ids = ["hard", "new", "easy", "unsolved", "medium"];
  const plan = await client.allocate(run, ids, 64, { step: 1 });
  const n = Object.fromEntries(plan.items.map((item) => [item.prompt_id, item.samples]));
  console.log(`gvm: ${show(plan.items)} (total ${plan.total})`);
  check("items come in request order", plan.items.map((i) => i.prompt_id).join() === ids.join(), n);
  check("the whole budget is spent", plan.total === 64 && sum(Object.values(n)) === 64, plan.total);
  check("every count within 2..32", Object.values(n).every((k) => k >= 2 && k <= 32), n);
  check("lower acceptance, larger norms: more samples", n.hard > n.medium && n.medium > n.easy, n);
  check("GVM beats uniform", plan.predicted_variance < plan.uniform_variance, plan);

  // 4. The published algorithm on raw rates gives the paper's integers (41: the fix-up runs).
  const paper = await client.patchRun(run, { strategy: "gvm-paper", prior_strength: 0 });
  const published = await client.allocate(run, ["easy", "medium", "hard", "unsolved"], 41, { step: 1 });
  const rates = observations.map((o) => {
    const [total, count] = o.grad_norms
      ? [sum(o.grad_norms), o.grad_norms.length]
      : [o.grad_norm_sum ?? 0, o.grad_norm_count ?? 0];
    return { p: o.accepted / o.samples, g: count ? total / count : 0 };
  });
  const expected = paperCounts(rates, 41, paper.config.alpha, paper.config.beta);
  const got = published.items.map((i) => i.samples);
  console.log(`gvm-paper: ${show(published.items)} (expected ${expected.counts.join(", ")})`);
  check("gvm-paper integers equal the published rule's", got.join() === expected.counts.join(), got);
  const raw = published.items.every((i, k) => i.p_hat === rates[k].p && i.g_hat === rates[k].g);
  check("gvm-paper estimates are the raw rates", raw, published.items);
  const shares = published.items.every((i, k) => Math.abs(i.weight - expected.shares[k]) < 1e-12);
  check("gvm-paper weights are the rule's shares", shares, published.items);
  const unsolved = published.items[3];
  const filtered = unsolved.reason === "filtered" && unsolved.samples === 0;
  check("a never-accepted prompt is filtered", filtered, unsolved);

  // 5. What the service stored for one prompt.
  const hard = await client.promptStats(run, "hard");
  const stored = [hard.samples, hard.accepted, hard.grad_norm_sum, hard.grad_norm_count];
  check("stored statistics are the reported ones", stored.join() === "8,2,5,2", hard);

  // 6. Mistakes are errors that name the field.
  try {
    await client.allocate(run, ["easy", "easy"], 4);
    check("repeated prompt ids are refused", false, "no error");
  } catch (error) {
    const ok = error instanceof BudgetError && error.status === 422 && error.field === "prompt_ids[1]";
    check("repeated prompt ids are refused (422, field prompt_ids[1])", ok, String(error));
  }
} finally {
  await client.deleteRun(run).catch((error) => check("run deleted", false, String(error)));
}
try {
  await client.getRun(run);
  check("a deleted run is gone", false, "still there");
} catch (error) {
  const gone = error instanceof BudgetError && error.code === "run_not_found";
  check("a deleted run is gone (404 run_not_found)", gone, String(error));
}

if (failures.length) {
  console.error(`${failures.length} check(s) failed: ${failures.join("; ")}`);
  process.exit(1);
}
console.log("all checks passed");
