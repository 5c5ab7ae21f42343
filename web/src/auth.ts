/**
 * The bearer token, supplied by the host product. Sources, the first that has one wins:
 *
 * 1. An embedding host page: `parent.postMessage({type: "billing:token", token}, origin)`.
 *    Only messages from the parent window whose origin is `document.referrer`'s origin are
 *    taken (the page that framed us); the app asks for a token with
 *    `{type: "billing:token-request"}` when it starts and whenever the token is refused.
 * 2. sessionStorage (`billing.token`), where every accepted token is kept for the tab; a
 *    host on the same origin may also write it there itself.
 * 3. Development only (config `dev: true`): `/credits#token=<JWT>`. A fragment is never sent
 *    to a server; the app stores the token and removes the fragment from the address bar.
 *
 * The payload is decoded for display (user id, admin role) only: the services verify.
 */

export const TOKEN_STORAGE_KEY = "billing.token";
export const TOKEN_MESSAGE = "billing:token";
export const TOKEN_REQUEST_MESSAGE = "billing:token-request";

export interface Claims {
  sub: string | null;
  roles: string[];
  /** Expiry, seconds since the epoch. */
  exp: number | null;
}

function base64UrlDecode(segment: string): string | null {
  if (!/^[A-Za-z0-9_-]*$/.test(segment)) {
    return null;
  }
  const base64 = segment.replace(/-/g, "+").replace(/_/g, "/");
  const padded = base64 + "=".repeat((4 - (base64.length % 4)) % 4);
  try {
    const binary = atob(padded);
    const bytes = Uint8Array.from(binary, (c) => c.charCodeAt(0));
    return new TextDecoder("utf-8", { fatal: true }).decode(bytes);
  } catch {
    return null;
  }
}

/** The claims of a JWT, or null when it is not one. The signature is not checked. */
export function decodeJwtPayload(token: string): Claims | null {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) {
    return null;
  }
  const json = base64UrlDecode(parts[1]);
  if (json === null) {
    return null;
  }
  let payload: unknown;
  try {
    payload = JSON.parse(json);
  } catch {
    return null;
  }
  if (typeof payload !== "object" || payload === null || Array.isArray(payload)) {
    return null;
  }
  const claims = payload as Record<string, unknown>;
  const roles = Array.isArray(claims.roles)
    ? claims.roles.filter((r): r is string => typeof r === "string")
    : [];
  return {
    sub: typeof claims.sub === "string" ? claims.sub : null,
    roles,
    exp: typeof claims.exp === "number" ? claims.exp : null,
  };
}

export function isExpired(claims: Claims, nowMs: number): boolean {
  return claims.exp !== null && claims.exp * 1000 <= nowMs;
}

export function isAdmin(claims: Claims | null): boolean {
  return claims !== null && claims.roles.includes("admin");
}

export interface FragmentToken {
  token: string | null;
  /** The fragment to leave in the address bar ("" or "#rest"). */
  rest: string;
}

/** `#token=<JWT>` (other fragment parameters are kept). */
export function tokenFromFragment(hash: string): FragmentToken {
  const raw = hash.startsWith("#") ? hash.slice(1) : hash;
  if (!raw) {
    return { token: null, rest: "" };
  }
  const params = new URLSearchParams(raw);
  if (!params.has("token")) {
    return { token: null, rest: hash };
  }
  const token = params.get("token") ?? "";
  params.delete("token");
  const rest = params.toString();
  return { token: token || null, rest: rest ? `#${rest}` : "" };
}

export interface TokenStorage {
  getItem(key: string): string | null;
  setItem(key: string, value: string): void;
  removeItem(key: string): void;
}

/** sessionStorage, or nothing where it is blocked (a sandboxed or third-party frame). */
export function sessionTokenStorage(): TokenStorage | null {
  try {
    const storage = window.sessionStorage;
    storage.getItem(TOKEN_STORAGE_KEY);
    return storage;
  } catch {
    return null;
  }
}

type Listener = (token: string | null) => void;

/** The current token and who wants to hear when it changes. */
export class TokenStore {
  private token: string | null;
  private readonly listeners = new Set<Listener>();

  constructor(private readonly storage: TokenStorage | null) {
    this.token = readStored(storage);
  }

  get(): string | null {
    return this.token;
  }

  set(token: string): void {
    this.token = token;
    try {
      this.storage?.setItem(TOKEN_STORAGE_KEY, token);
    } catch {
      // Storage full or blocked: the token still lives for this page.
    }
    this.emit();
  }

  clear(): void {
    this.token = null;
    try {
      this.storage?.removeItem(TOKEN_STORAGE_KEY);
    } catch {
      // Nothing stored that could be reused.
    }
    this.emit();
  }

  subscribe(listener: Listener): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  private emit(): void {
    for (const listener of this.listeners) {
      listener(this.token);
    }
  }
}

function readStored(storage: TokenStorage | null): string | null {
  try {
    return storage?.getItem(TOKEN_STORAGE_KEY) || null;
  } catch {
    return null;
  }
}

export interface LocationLike {
  pathname: string;
  search: string;
  hash: string;
}

export interface HistoryLike {
  readonly state: unknown;
  replaceState(data: unknown, unused: string, url?: string | URL | null): void;
}

/**
 * Takes a `#token=` fragment off the address bar; in development it becomes the token.
 * Outside development the fragment is removed all the same, so a token pasted into a link
 * does not stay visible (or get bookmarked), but it is never used.
 */
export function consumeFragmentToken(
  location: LocationLike,
  history: HistoryLike,
  store: TokenStore,
  dev: boolean,
): void {
  const { token, rest } = tokenFromFragment(location.hash);
  if (rest === location.hash) {
    return;
  }
  history.replaceState(history.state, "", `${location.pathname}${location.search}${rest}`);
  if (dev && token) {
    store.set(token);
  }
}

export interface FrameWindow {
  parent: { postMessage(message: unknown, targetOrigin: string): void } | null;
  addEventListener(type: "message", listener: (event: MessageEvent) => void): void;
  removeEventListener(type: "message", listener: (event: MessageEvent) => void): void;
}

/** The origin of the page that framed us, or null when not framed (or not knowable). */
export function embedderOrigin(win: FrameWindow, self: unknown, referrer: string): string | null {
  if (!win.parent || win.parent === self || !referrer) {
    return null;
  }
  try {
    const origin = new URL(referrer).origin;
    return origin === "null" ? null : origin;
  } catch {
    return null;
  }
}

/**
 * Listens for tokens from the embedding page (see the module comment) and asks it for one.
 * Returns a function that stops listening and one that asks again.
 */
export function listenForHostToken(
  win: FrameWindow,
  origin: string,
  store: TokenStore,
): { stop: () => void; request: () => void } {
  const parent = win.parent;
  const onMessage = (event: MessageEvent) => {
    if (event.origin !== origin || event.source !== parent) {
      return;
    }
    const data: unknown = event.data;
    if (typeof data !== "object" || data === null) {
      return;
    }
    const { type, token } = data as { type?: unknown; token?: unknown };
    if (type === TOKEN_MESSAGE && typeof token === "string" && token) {
      store.set(token);
    }
  };
  win.addEventListener("message", onMessage);
  const request = () => parent?.postMessage({ type: TOKEN_REQUEST_MESSAGE }, origin);
  request();
  return { stop: () => win.removeEventListener("message", onMessage), request };
}
