// @ts-check
/**
 * GVM Budget client for Node.js 20+: plain `fetch`, no dependencies.
 *
 *   import { BudgetClient } from "./client.js";
 *   const client = new BudgetClient("http://127.0.0.1:8000");
 *   await client.putRun("my-run", { min_samples: 2 });
 *   await client.report("my-run", 0, [{ prompt_id: "p1", samples: 8, accepted: 3 }]);
 *   const { items } = await client.allocate("my-run", ["p1", "p2"], 16, { step: 1 });
 *
 * Connection errors, timeouts, 429 and 5xx answers are retried with exponential backoff and full
 * jitter (`Retry-After` honoured). A retry sends the very same request, so a report keeps its
 * `report_id` and the service applies it once. Other 4xx answers are not retried: they throw a
 * `BudgetError` carrying the service's error body (`code`, `field`, `details`). When the
 * retries run out, `UnavailableError` is thrown (no spool and no fallback allocation here: the
 * Python client has those). The wire format is the committed `openapi.json`.
 */
import { randomUUID } from "node:crypto";
import { setTimeout as sleep } from "node:timers/promises";

/**
 * @typedef {object} Observation What a trainer saw for one prompt at one step.
 * @property {string} prompt_id
 * @property {number} samples samples drawn (integer >= 1)
 * @property {number} accepted accepted samples (integer, 0..samples)
 * @property {number[]} [grad_norms] gradient norms of the accepted samples, or instead:
 * @property {number} [grad_norm_sum] their sum, with
 * @property {number} [grad_norm_count] how many norms are in the sum
 * @property {number[]} [rejected_grad_norms] optional: the rejected samples' norms, or instead:
 * @property {number} [rejected_grad_norm_sum] their sum, with
 * @property {number} [rejected_grad_norm_count] how many (<= samples - accepted)
 */

/**
 * @typedef {object} RunConfig How the service allocates for a run; omitted fields take defaults.
 * @property {"gvm" | "gvm-paper" | "uniform" | "knapsack"} [strategy]
 * @property {"raft" | "grpo"} [algo]
 * @property {number} [alpha]
 * @property {number} [beta]
 * @property {number} [min_samples]
 * @property {number | null} [max_samples]
 * @property {number} [align_to]
 * @property {number | null} [filter_threshold]
 * @property {number | null} [filter_insufficient]
 * @property {number} [prior_strength]
 * @property {number | null} [half_life_steps]
 * @property {number} [explore_samples]
 * @property {boolean} [fit_prior]
 * @property {number} [grad_prior_strength]
 */

/**
 * @typedef {object} Run
 * @property {string} run_id
 * @property {Required<RunConfig>} config every field filled in
 * @property {string} created_at
 * @property {string} updated_at
 */

/**
 * @typedef {object} ReportResult
 * @property {string} report_id
 * @property {number} applied observations applied (0 for a duplicate)
 * @property {boolean} duplicate true when this report_id had been applied already
 */

/**
 * @typedef {object} AllocationItem
 * @property {string} prompt_id
 * @property {number} samples
 * @property {number} p_hat
 * @property {number} g_hat
 * @property {number} weight
 * @property {"gvm" | "floor" | "cap" | "explore" | "filtered"} reason
 */

/**
 * @typedef {object} Allocation Samples per prompt, items in the order of the request.
 * @property {string} run_id
 * @property {number} step
 * @property {string} strategy
 * @property {number} budget
 * @property {number} total
 * @property {AllocationItem[]} items
 * @property {number} predicted_variance
 * @property {number} uniform_variance
 */

/**
 * @typedef {object} ClientOptions
 * @property {string} [token] bearer token (GVM_API_TOKENS on the service)
 * @property {number} [timeoutMs] per attempt (default 10000)
 * @property {number} [attempts] tries in all, the first included (default 4)
 * @property {number} [backoffMs] cap of the first wait (default 250), doubling per attempt
 * @property {number} [maxBackoffMs] cap of any wait (default 8000)
 */

const RETRY_STATUS = new Set([429, 500, 502, 503, 504]);

/** An answer the service refused (4xx), or any error after the retries. */
export class BudgetError extends Error {
  /**
   * @param {string} message
   * @param {{status?: number, code?: string, field?: string | null, details?: object[],
   *          requestId?: string, cause?: unknown}} [info]
   */
  constructor(message, info = {}) {
    super(message, { cause: info.cause });
    this.name = new.target.name;
    /** HTTP status, 0 when no answer came. */
    this.status = info.status ?? 0;
    /** The service's error code, e.g. "invalid_request", "run_not_found". */
    this.code = info.code ?? "";
    /** The offending field's path, e.g. "observations[3].accepted". */
    this.field = info.field ?? null;
    this.details = info.details ?? [];
    this.requestId = info.requestId ?? "";
  }
}

/** The service stayed unreachable (or kept answering 429/5xx) through every attempt. */
export class UnavailableError extends BudgetError {}

/** @param {string} value one run or prompt id as a URL path segment */
const segment = (value) => encodeURIComponent(value);

/**
 * Seconds asked by a `Retry-After` header (delta-seconds or an HTTP date), or null.
 * @param {string | null} value
 */
export function parseRetryAfter(value) {
  if (!value) return null;
  const seconds = Number(value);
  if (Number.isFinite(seconds)) return Math.max(seconds, 0);
  const when = Date.parse(value);
  return Number.isNaN(when) ? null : Math.max((when - Date.now()) / 1000, 0);
}

export class BudgetClient {
  #base;
  /** @type {Record<string, string>} */
  #headers;
  #timeoutMs;
  #attempts;
  #backoffMs;
  #maxBackoffMs;

  /**
   * @param {string} [baseUrl] e.g. "http://127.0.0.1:8000"
   * @param {ClientOptions} [options]
   */
  constructor(baseUrl = "http://127.0.0.1:8000", options = {}) {
    const url = new URL(baseUrl);
    if (url.protocol !== "http:" && url.protocol !== "https:") {
      throw new TypeError(`baseUrl must start with http:// or https://, got ${baseUrl}`);
    }
    this.#base = baseUrl.replace(/\/+$/, "");
    this.#headers = { "content-type": "application/json", accept: "application/json" };
    if (options.token) this.#headers.authorization = `Bearer ${options.token}`;
    this.#timeoutMs = options.timeoutMs ?? 10_000;
    this.#attempts = Math.max(1, options.attempts ?? 4);
    this.#backoffMs = options.backoffMs ?? 250;
    this.#maxBackoffMs = options.maxBackoffMs ?? 8_000;
  }

  /**
   * Create a run, or replace its config (its statistics are kept).
   * @param {string} runId
   * @param {RunConfig} [config]
   * @returns {Promise<Run>}
   */
  putRun(runId, config = {}) {
    return this.#call("PUT", `/v1/runs/${segment(runId)}`, config);
  }

  /** @param {string} runId @returns {Promise<Run>} */
  getRun(runId) {
    return this.#call("GET", `/v1/runs/${segment(runId)}`);
  }

  /**
   * Change only the given config fields.
   * @param {string} runId
   * @param {RunConfig} fields
   * @returns {Promise<Run>}
   */
  patchRun(runId, fields) {
    return this.#call("PATCH", `/v1/runs/${segment(runId)}`, fields);
  }

  /** Delete a run and all its statistics. @param {string} runId @returns {Promise<void>} */
  async deleteRun(runId) {
    await this.#call("DELETE", `/v1/runs/${segment(runId)}`);
  }

  /**
   * Report one step's observations. The report id is fixed before the first attempt, so
   * retries (and your own re-sends with the same `reportId`) are applied once.
   * @param {string} runId
   * @param {number} step
   * @param {Observation[]} observations
   * @param {{reportId?: string}} [options]
   * @returns {Promise<ReportResult>}
   */
  report(runId, step, observations, { reportId = randomUUID() } = {}) {
    const body = { report_id: reportId, step, observations };
    return this.#call("POST", `/v1/runs/${segment(runId)}/observations`, body);
  }

  /**
   * Samples per prompt for the next batch (items in the order of `promptIds`).
   * @param {string} runId
   * @param {string[]} promptIds distinct ids
   * @param {number} budget samples to spread
   * @param {{step?: number, drawn?: number[], drawnAccepted?: number[]}} [options] the current
   *   step (default: the last reported one); for a top-up, the samples each prompt already drew
   *   this step (and how many were accepted): the answer's samples are then the additional ones
   * @returns {Promise<Allocation>}
   */
  allocate(runId, promptIds, budget, { step, drawn, drawnAccepted } = {}) {
    const body = {
      prompt_ids: promptIds,
      budget,
      ...(step === undefined ? {} : { step }),
      ...(drawn === undefined ? {} : { drawn }),
      ...(drawnAccepted === undefined ? {} : { drawn_accepted: drawnAccepted }),
    };
    return this.#call("POST", `/v1/runs/${segment(runId)}/allocations`, body);
  }

  /** @param {string} runId @returns {Promise<Allocation>} */
  latestAllocation(runId) {
    return this.#call("GET", `/v1/runs/${segment(runId)}/allocations/latest`);
  }

  /**
   * A prompt's stored statistics and current estimates.
   * @param {string} runId
   * @param {string} promptId
   * @returns {Promise<{prompt_id: string, samples: number, accepted: number,
   *   grad_norm_sum: number, grad_norm_count: number, rejected_grad_norm_sum: number,
   *   rejected_grad_norm_count: number, last_step: number, p_hat: number, g_hat: number}>}
   */
  promptStats(runId, promptId) {
    return this.#call("GET", `/v1/runs/${segment(runId)}/prompts/${segment(promptId)}`);
  }

  /** @param {string} runId @returns {Promise<Record<string, unknown>>} */
  summary(runId) {
    return this.#call("GET", `/v1/runs/${segment(runId)}/summary`);
  }

  /**
   * One logical call: the same request until it gets a final answer or the attempts run out.
   * @param {string} method
   * @param {string} path
   * @param {unknown} [body]
   * @returns {Promise<any>}
   */
  async #call(method, path, body) {
    const payload = body === undefined ? undefined : JSON.stringify(body);
    const init = { method, headers: this.#headers, body: payload };
    for (let attempt = 1; ; attempt++) {
      /** @type {Response | undefined} */
      let response;
      /** @type {unknown} */
      let failure;
      try {
        const signal = AbortSignal.timeout(this.#timeoutMs);
        response = await fetch(this.#base + path, { ...init, signal });
      } catch (error) {
        failure = error; // connection refused or reset, DNS, timeout
      }
      if (response && !RETRY_STATUS.has(response.status)) return this.#read(method, path, response);
      const why = response ? await this.#refusal(method, path, response) : failure;
      if (attempt >= this.#attempts) {
        const last = why instanceof BudgetError ? why : null;
        const reason = why instanceof Error ? why.message : String(why);
        throw new UnavailableError(`${method} ${path}: gave up after ${attempt} attempts: ${reason}`, {
          status: last?.status,
          code: last?.code,
          requestId: last?.requestId,
          cause: why,
        });
      }
      const asked = response ? parseRetryAfter(response.headers.get("retry-after")) : null;
      const cap = Math.min(this.#maxBackoffMs, this.#backoffMs * 2 ** (attempt - 1));
      const waitMs = asked === null ? Math.random() * cap : Math.min(asked * 1000, this.#maxBackoffMs);
      await sleep(waitMs);
    }
  }

  /**
   * @param {string} method
   * @param {string} path
   * @param {Response} response
   */
  async #read(method, path, response) {
    if (!response.ok) throw await this.#refusal(method, path, response);
    if (response.status === 204) return undefined;
    return response.json();
  }

  /**
   * The service's error body as a BudgetError (also for answers that are not its JSON shape).
   * @param {string} method
   * @param {string} path
   * @param {Response} response
   */
  async #refusal(method, path, response) {
    const text = await response.text();
    let error = null;
    try {
      error = JSON.parse(text).error ?? null;
    } catch {
      // not JSON: a proxy's error page, say
    }
    const message = error?.message ?? (text.slice(0, 200) || response.statusText);
    return new BudgetError(`${method} ${path}: ${response.status} ${message}`, {
      status: response.status,
      code: error?.code,
      field: error?.field,
      details: error?.details,
      requestId: error?.request_id ?? response.headers.get("x-request-id") ?? "",
    });
  }
}
