import type { Config } from "../src/config";

export const CONFIG: Config = {
  checkoutUrl: "http://checkout.test",
  ledgerUrl: "http://ledger.test",
  meteringUrl: "http://metering.test",
  reconcilerUrl: "http://reconciler.test",
  pricingUrl: "https://example.test/pricing",
  termsUrl: "https://example.test/terms",
  refundPolicyUrl: "https://example.test/refunds",
  dev: false,
  productName: "Acme Chat",
};

function base64Url(text: string): string {
  return Buffer.from(text, "utf-8").toString("base64url");
}

/** An unsigned JWT-shaped token with these claims (the app never verifies signatures). */
export function makeToken(claims: Record<string, unknown>): string {
  return `${base64Url(JSON.stringify({ alg: "RS256", typ: "JWT" }))}.${base64Url(JSON.stringify(claims))}.c2ln`;
}

export interface Call {
  method: string;
  url: string;
  headers: Record<string, string>;
  body: unknown;
}

type Handler = (call: Call) => Response | Promise<Response>;

export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), {
    status,
    headers: { "Content-Type": "application/json" },
  });
}

/**
 * A fetch that answers from `routes` ("METHOD url-without-query" or "METHOD full-url"),
 * records every call, and answers 404 for anything unknown.
 */
export function fakeFetch(routes: Record<string, Handler>) {
  const calls: Call[] = [];
  const fetcher = async (input: RequestInfo | URL, init: RequestInit = {}): Promise<Response> => {
    const url = String(input);
    const method = init.method ?? "GET";
    const headers = { ...(init.headers as Record<string, string> | undefined) };
    const body = typeof init.body === "string" ? JSON.parse(init.body) : undefined;
    const call = { method, url, headers, body };
    calls.push(call);
    if (init.signal?.aborted) {
      throw new DOMException("aborted", "AbortError");
    }
    const handler = routes[`${method} ${url}`] ?? routes[`${method} ${url.split("?")[0]}`];
    if (!handler) {
      return json({ error: "not_found", message: `no route ${method} ${url}` }, 404);
    }
    return handler(call);
  };
  return { fetch: fetcher as typeof fetch, calls };
}
