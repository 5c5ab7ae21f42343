import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { ApiError } from "../src/api";
import { pollPurchase } from "../src/polling";
import type { PurchaseStatus } from "../src/types";
import { purchase } from "./backend";

/** Answers each call with the next item; a thrown item is thrown. */
function sequence(items: (PurchaseStatus | Error)[]) {
  const calls: number[] = [];
  const get = vi.fn(async () => {
    calls.push(Date.now());
    const item = items[Math.min(calls.length - 1, items.length - 1)]!;
    if (item instanceof Error) {
      throw item;
    }
    return purchase("pur_1", item);
  });
  return { get, calls };
}

describe("pollPurchase", () => {
  beforeEach(() => {
    vi.useFakeTimers();
    vi.setSystemTime(new Date("2025-01-01T00:00:00Z"));
  });
  afterEach(() => {
    vi.useRealTimers();
  });

  it("asks every second until the purchase is fulfilled", async () => {
    const { get, calls } = sequence(["pending", "paid", "fulfilled"]);
    const result = pollPurchase(get);
    await vi.runAllTimersAsync();
    const outcome = await result;
    expect(outcome.kind).toBe("fulfilled");
    expect(get).toHaveBeenCalledTimes(3);
    const start = calls[0]!;
    expect(calls.map((t) => t - start)).toEqual([0, 1000, 2000]);
  });

  it("stops at a failed purchase", async () => {
    const { get } = sequence(["pending", "failed"]);
    const result = pollPurchase(get);
    await vi.runAllTimersAsync();
    expect((await result).kind).toBe("failed");
    expect(get).toHaveBeenCalledTimes(2);
  });

  it("gives up after 60 seconds, not before", async () => {
    const { get, calls } = sequence(["pending"]);
    let settled = false;
    const result = pollPurchase(get).then((outcome) => {
      settled = true;
      return outcome;
    });
    await vi.advanceTimersByTimeAsync(59_000);
    expect(settled).toBe(false);
    await vi.runAllTimersAsync();
    expect((await result).kind).toBe("timeout");
    expect(get).toHaveBeenCalledTimes(61);
    expect(calls[calls.length - 1]! - calls[0]!).toBe(60_000);
  });

  it("keeps asking through passing failures (5xx, network)", async () => {
    const { get } = sequence([
      new ApiError(503, "unavailable", "busy"),
      new ApiError(0, "network_error", "offline"),
      "fulfilled",
    ]);
    const result = pollPurchase(get);
    await vi.runAllTimersAsync();
    expect((await result).kind).toBe("fulfilled");
    expect(get).toHaveBeenCalledTimes(3);
  });

  it("stops at an answer that asking again cannot change", async () => {
    const { get } = sequence([new ApiError(404, "purchase_not_found", "no such purchase")]);
    const result = pollPurchase(get);
    await vi.runAllTimersAsync();
    const outcome = await result;
    expect(outcome).toMatchObject({ kind: "error", error: { status: 404 } });
    expect(get).toHaveBeenCalledTimes(1);
  });

  it("stops when aborted, without waiting for the next second", async () => {
    const { get } = sequence(["pending"]);
    const controller = new AbortController();
    const result = pollPurchase(get, { signal: controller.signal });
    await vi.advanceTimersByTimeAsync(2_500);
    controller.abort();
    await vi.advanceTimersByTimeAsync(0);
    expect((await result).kind).toBe("aborted");
    expect(get).toHaveBeenCalledTimes(3);
  });
});
