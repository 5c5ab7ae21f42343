/**
 * After Stripe sends the buyer back, the purchase is granted only once Stripe's webhook has
 * gone through the ledger, so the page asks checkout for the purchase until it is settled.
 */

import { ApiError } from "./api";
import type { Purchase } from "./types";

export type PollOutcome =
  | { kind: "fulfilled"; purchase: Purchase }
  | { kind: "failed"; purchase: Purchase }
  | { kind: "refunded"; purchase: Purchase }
  | { kind: "timeout" }
  | { kind: "error"; error: ApiError }
  | { kind: "aborted" };

export interface PollOptions {
  intervalMs?: number;
  timeoutMs?: number;
  signal?: AbortSignal;
  now?: () => number;
}

export const POLL_INTERVAL_MS = 1000;
export const POLL_TIMEOUT_MS = 60_000;

// An answer that will not change by asking again; anything else (a 5xx, a network blip, a
// 429) is retried until the deadline.
function isFinalError(error: ApiError): boolean {
  return [400, 401, 403, 404, 422].includes(error.status);
}

function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      signal?.removeEventListener("abort", done);
      resolve();
    }
    signal?.addEventListener("abort", done);
  });
}

export async function pollPurchase(
  fetchPurchase: (signal?: AbortSignal) => Promise<Purchase>,
  options: PollOptions = {},
): Promise<PollOutcome> {
  const interval = options.intervalMs ?? POLL_INTERVAL_MS;
  const timeout = options.timeoutMs ?? POLL_TIMEOUT_MS;
  const now = options.now ?? Date.now;
  const { signal } = options;
  const deadline = now() + timeout;
  for (;;) {
    if (signal?.aborted) {
      return { kind: "aborted" };
    }
    try {
      const purchase = await fetchPurchase(signal);
      switch (purchase.status) {
        case "fulfilled":
          return { kind: "fulfilled", purchase };
        case "failed":
          return { kind: "failed", purchase };
        case "refunded":
        case "partially_refunded":
          return { kind: "refunded", purchase };
        default:
        // pending or paid: the grant is still on its way.
      }
    } catch (error) {
      if (signal?.aborted) {
        return { kind: "aborted" };
      }
      if (error instanceof ApiError && isFinalError(error)) {
        return { kind: "error", error };
      }
      if (!(error instanceof ApiError)) {
        throw error;
      }
    }
    if (now() + interval > deadline) {
      return { kind: "timeout" };
    }
    await sleep(interval, signal);
  }
}
