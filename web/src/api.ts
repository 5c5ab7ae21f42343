/**
 * The one way this app talks to the services: a base URL per service from the config, the
 * bearer token on every call, and every failure as an `ApiError` carrying the HTTP status
 * and the services' error code (`{"error": code, "message": text}`).
 */

import type { Config } from "./config";

export type Service = "checkout" | "ledger" | "metering" | "reconciler";

/** status 0: the request never got an answer (network, CORS, aborted). */
export class ApiError extends Error {
  override name = "ApiError";

  constructor(
    readonly status: number,
    readonly code: string,
    message: string,
    readonly body: Record<string, unknown> = {},
  ) {
    super(message);
  }
}

export function isApiError(error: unknown, code?: string): error is ApiError {
  return error instanceof ApiError && (code === undefined || error.code === code);
}

export interface RequestOptions {
  method?: "GET" | "POST" | "PUT" | "PATCH" | "DELETE";
  body?: unknown;
  headers?: Record<string, string>;
  signal?: AbortSignal;
}

export interface ApiClientOptions {
  config: Pick<Config, "checkoutUrl" | "ledgerUrl" | "meteringUrl" | "reconcilerUrl">;
  getToken: () => string | null;
  /** Called on every 401, before the error is thrown. */
  onUnauthorized?: () => void;
  fetch?: typeof fetch;
}

const STATUS_CODES: Record<number, string> = {
  400: "bad_request",
  401: "unauthorized",
  403: "forbidden",
  404: "not_found",
  409: "conflict",
  422: "validation_error",
  429: "rate_limited",
  502: "bad_gateway",
  503: "unavailable",
  504: "gateway_timeout",
};

/** The error a non-2xx answer stands for; the body is used when it has the services' shape. */
export function errorFromResponse(status: number, statusText: string, body: unknown): ApiError {
  const fields =
    typeof body === "object" && body !== null && !Array.isArray(body)
      ? (body as Record<string, unknown>)
      : {};
  const code =
    typeof fields.error === "string" && fields.error
      ? fields.error
      : (STATUS_CODES[status] ?? `http_${status}`);
  const message =
    typeof fields.message === "string" && fields.message
      ? fields.message
      : statusText || `the service answered ${status}`;
  return new ApiError(status, code, message, fields);
}

export class ApiClient {
  private readonly bases: Record<Service, string>;
  private readonly fetcher: typeof fetch;

  constructor(private readonly options: ApiClientOptions) {
    const { config } = options;
    this.bases = {
      checkout: config.checkoutUrl,
      ledger: config.ledgerUrl,
      metering: config.meteringUrl,
      reconciler: config.reconcilerUrl,
    };
    // Bound: a bare `fetch` called as a method of another object throws "Illegal invocation".
    this.fetcher = options.fetch ?? globalThis.fetch.bind(globalThis);
  }

  url(service: Service, path: string): string {
    return `${this.bases[service]}${path}`;
  }

  async json<T>(service: Service, path: string, options: RequestOptions = {}): Promise<T> {
    const response = await this.send(service, path, options, "application/json");
    if (response.status === 204) {
      return undefined as T;
    }
    try {
      return (await response.json()) as T;
    } catch {
      throw new ApiError(
        response.status,
        "bad_response",
        "the service answered something other than JSON",
      );
    }
  }

  async blob(service: Service, path: string, options: RequestOptions = {}): Promise<Blob> {
    const response = await this.send(service, path, options, "*/*");
    return response.blob();
  }

  private async send(
    service: Service,
    path: string,
    options: RequestOptions,
    accept: string,
  ): Promise<Response> {
    const headers: Record<string, string> = { Accept: accept, ...options.headers };
    const token = this.options.getToken();
    if (token) {
      headers.Authorization = `Bearer ${token}`;
    }
    const init: RequestInit = { method: options.method ?? "GET", headers, cache: "no-store" };
    if (options.body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(options.body);
    }
    if (options.signal) {
      init.signal = options.signal;
    }
    let response: Response;
    try {
      response = await this.fetcher(this.url(service, path), init);
    } catch (error) {
      if (options.signal?.aborted || (error as { name?: unknown } | null)?.name === "AbortError") {
        throw new ApiError(0, "aborted", "the request was cancelled");
      }
      throw new ApiError(0, "network_error", `the ${service} service could not be reached`);
    }
    if (response.ok) {
      return response;
    }
    let body: unknown = null;
    try {
      body = await response.json();
    } catch {
      // Not the services' JSON (a proxy's HTML page, say): the status alone tells.
    }
    const error = errorFromResponse(response.status, response.statusText, body);
    if (response.status === 401) {
      this.options.onUnauthorized?.();
    }
    throw error;
  }
}

/** A fresh Idempotency-Key: one per click, so a retried request is recognised. */
export function newIdempotencyKey(): string {
  if (typeof crypto.randomUUID === "function") {
    return crypto.randomUUID();
  }
  // randomUUID exists only in secure contexts; getRandomValues everywhere.
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  bytes[6] = ((bytes[6] ?? 0) & 0x0f) | 0x40;
  bytes[8] = ((bytes[8] ?? 0) & 0x3f) | 0x80;
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** Text for a person: the service's own message for known failures, kept short. */
export function describeError(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 0) {
      return "The billing service could not be reached. Check your connection and try again.";
    }
    if (error.status === 429) {
      return "Too many requests. Please wait a moment and try again.";
    }
    if (error.status >= 500) {
      return "The billing service is having trouble. Please try again in a moment.";
    }
    return error.message;
  }
  return "Something went wrong. Please try again.";
}
