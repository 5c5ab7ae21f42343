import { describe, expect, it, vi } from "vitest";

import {
  ApiClient,
  ApiError,
  describeError,
  errorFromResponse,
  newIdempotencyKey,
} from "../src/api";
import { CONFIG, fakeFetch, json } from "./helpers";

function client(fetcher: typeof fetch, token: string | null = "tok", onUnauthorized = vi.fn()) {
  return {
    api: new ApiClient({ config: CONFIG, getToken: () => token, onUnauthorized, fetch: fetcher }),
    onUnauthorized,
  };
}

describe("ApiClient", () => {
  it("calls the service's base URL with the bearer token", async () => {
    const { fetch, calls } = fakeFetch({
      "GET http://ledger.test/api/balance": () => json({ balanceMillicredits: 5 }),
    });
    const { api } = client(fetch);
    await expect(api.json("ledger", "/api/balance")).resolves.toEqual({ balanceMillicredits: 5 });
    expect(calls[0]!.headers.Authorization).toBe("Bearer tok");
    expect(calls[0]!.headers.Accept).toBe("application/json");
  });

  it("sends no Authorization header without a token", async () => {
    const { fetch, calls } = fakeFetch({
      "GET http://checkout.test/api/v1/meta/features": () => json({}),
    });
    await client(fetch, null).api.json("checkout", "/api/v1/meta/features");
    expect(calls[0]!.headers.Authorization).toBeUndefined();
  });

  it("uses the page's origin for an empty base URL", async () => {
    const { fetch, calls } = fakeFetch({ "GET /api/packages": () => json([]) });
    const api = new ApiClient({
      config: { ...CONFIG, checkoutUrl: "" },
      getToken: () => null,
      fetch,
    });
    await api.json("checkout", "/api/packages");
    expect(calls[0]!.url).toBe("/api/packages");
  });

  it("sends JSON bodies and extra headers", async () => {
    const { fetch, calls } = fakeFetch({
      "POST http://checkout.test/api/purchases": () => json({ purchaseId: "p" }, 201),
    });
    await client(fetch).api.json("checkout", "/api/purchases", {
      method: "POST",
      body: { packageCode: "starter" },
      headers: { "Idempotency-Key": "k1" },
    });
    expect(calls[0]).toMatchObject({
      method: "POST",
      body: { packageCode: "starter" },
      headers: { "Content-Type": "application/json", "Idempotency-Key": "k1" },
    });
  });

  it("maps the services' error body to an ApiError with status and code", async () => {
    const { fetch } = fakeFetch({
      "POST http://checkout.test/api/purchases": () =>
        json({ error: "purchases_disabled", message: "purchases are switched off" }, 503),
    });
    const error = await client(fetch)
      .api.json("checkout", "/api/purchases", { method: "POST", body: {} })
      .catch((e: unknown) => e);
    expect(error).toBeInstanceOf(ApiError);
    expect(error).toMatchObject({
      status: 503,
      code: "purchases_disabled",
      message: "purchases are switched off",
    });
  });

  it("keeps the extra fields of the error body", async () => {
    const body = {
      error: "insufficient_credits",
      message: "not enough",
      requiredMillicredits: 60000,
    };
    const { fetch } = fakeFetch({ "POST http://metering.test/api/ai/chat": () => json(body, 402) });
    const error = (await client(fetch)
      .api.json("metering", "/api/ai/chat", { method: "POST", body: {} })
      .catch((e: unknown) => e)) as ApiError;
    expect(error.body.requiredMillicredits).toBe(60000);
  });

  it("maps a non-JSON error (a proxy page) by its status", async () => {
    const { fetch } = fakeFetch({
      "GET http://ledger.test/api/balance": () =>
        new Response("<html>Bad gateway</html>", { status: 502, statusText: "Bad Gateway" }),
    });
    await expect(client(fetch).api.json("ledger", "/api/balance")).rejects.toMatchObject({
      status: 502,
      code: "bad_gateway",
      message: "Bad Gateway",
    });
  });

  it("reports a 401 to the app before throwing", async () => {
    const { fetch } = fakeFetch({
      "GET http://ledger.test/api/balance": () =>
        json({ error: "unauthorized", message: "token expired" }, 401),
    });
    const { api, onUnauthorized } = client(fetch);
    await expect(api.json("ledger", "/api/balance")).rejects.toMatchObject({ status: 401 });
    expect(onUnauthorized).toHaveBeenCalledTimes(1);
  });

  it("does not report other failures as sign-outs", async () => {
    const { fetch } = fakeFetch({
      "GET http://ledger.test/api/balance": () => json({ error: "forbidden", message: "no" }, 403),
    });
    const { api, onUnauthorized } = client(fetch);
    await expect(api.json("ledger", "/api/balance")).rejects.toMatchObject({ code: "forbidden" });
    expect(onUnauthorized).not.toHaveBeenCalled();
  });

  it("turns an unreachable service into status 0", async () => {
    const failing = (async () => {
      throw new TypeError("Failed to fetch");
    }) as typeof fetch;
    await expect(client(failing).api.json("metering", "/api/usage")).rejects.toMatchObject({
      status: 0,
      code: "network_error",
    });
  });

  it("turns a cancelled request into code aborted", async () => {
    const { fetch } = fakeFetch({ "GET http://ledger.test/api/balance": () => json({}) });
    const controller = new AbortController();
    controller.abort();
    await expect(
      client(fetch).api.json("ledger", "/api/balance", { signal: controller.signal }),
    ).rejects.toMatchObject({ status: 0, code: "aborted" });
  });

  it("refuses a 2xx answer that is not JSON", async () => {
    const { fetch } = fakeFetch({
      "GET http://ledger.test/api/balance": () => new Response("<html>", { status: 200 }),
    });
    await expect(client(fetch).api.json("ledger", "/api/balance")).rejects.toMatchObject({
      code: "bad_response",
    });
  });

  it("fetches files as blobs with the token", async () => {
    const { fetch, calls } = fakeFetch({
      "GET http://ledger.test/api/statements/2025-01.csv": () =>
        new Response("a,b\n1,2\n", { headers: { "Content-Type": "text/csv" } }),
    });
    const blob = await client(fetch).api.blob("ledger", "/api/statements/2025-01.csv");
    expect(await blob.text()).toBe("a,b\n1,2\n");
    expect(calls[0]!.headers.Authorization).toBe("Bearer tok");
  });
});

describe("errorFromResponse", () => {
  it("falls back to a code per status and to the status text", () => {
    expect(errorFromResponse(429, "", null)).toMatchObject({
      code: "rate_limited",
      message: "the service answered 429",
    });
    expect(errorFromResponse(418, "Teapot", [])).toMatchObject({
      code: "http_418",
      message: "Teapot",
    });
  });
});

describe("describeError", () => {
  it("speaks plainly about outages and keeps the services' own messages otherwise", () => {
    expect(describeError(new ApiError(0, "network_error", "x"))).toMatch(/could not be reached/);
    expect(describeError(new ApiError(503, "unavailable", "x"))).toMatch(/having trouble/);
    expect(describeError(new ApiError(422, "unknown_package", "unknown package: x"))).toBe(
      "unknown package: x",
    );
    expect(describeError(new Error("boom"))).toMatch(/Something went wrong/);
  });
});

describe("newIdempotencyKey", () => {
  it("is a fresh v4 UUID each time", () => {
    const a = newIdempotencyKey();
    const b = newIdempotencyKey();
    expect(a).toMatch(/^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/);
    expect(a).not.toBe(b);
  });

  it("works where randomUUID is missing (no secure context)", () => {
    const original = crypto.randomUUID;
    Object.defineProperty(crypto, "randomUUID", { value: undefined, configurable: true });
    try {
      expect(newIdempotencyKey()).toMatch(
        /^[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/,
      );
    } finally {
      Object.defineProperty(crypto, "randomUUID", { value: original, configurable: true });
    }
  });
});
