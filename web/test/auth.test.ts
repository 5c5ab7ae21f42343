import { describe, expect, it, vi } from "vitest";

import {
  TOKEN_STORAGE_KEY,
  TokenStore,
  consumeFragmentToken,
  decodeJwtPayload,
  embedderOrigin,
  isAdmin,
  isExpired,
  listenForHostToken,
  tokenFromFragment,
  type FrameWindow,
  type TokenStorage,
} from "../src/auth";
import { makeToken } from "./helpers";

function memoryStorage(initial: Record<string, string> = {}): TokenStorage & {
  data: Record<string, string>;
} {
  const data = { ...initial };
  return {
    data,
    getItem: (key) => data[key] ?? null,
    setItem: (key, value) => {
      data[key] = value;
    },
    removeItem: (key) => {
      delete data[key];
    },
  };
}

describe("decodeJwtPayload", () => {
  it("reads sub, roles and exp", () => {
    const token = makeToken({ sub: "user-1", roles: ["admin", 7, "ops"], exp: 2_000_000_000 });
    expect(decodeJwtPayload(token)).toEqual({
      sub: "user-1",
      roles: ["admin", "ops"],
      exp: 2_000_000_000,
    });
  });

  it("decodes base64url payloads with UTF-8 text", () => {
    const token = makeToken({ sub: "jürgen-ß-✓", roles: [] });
    expect(decodeJwtPayload(token)?.sub).toBe("jürgen-ß-✓");
  });

  it("defaults missing claims", () => {
    expect(decodeJwtPayload(makeToken({}))).toEqual({ sub: null, roles: [], exp: null });
    expect(decodeJwtPayload(makeToken({ roles: "admin" }))?.roles).toEqual([]);
  });

  it.each([
    ["not a token", "one segment"],
    ["a.b", "two segments"],
    ["a.b.c.d", "four segments"],
    ["x.!!!.y", "not base64url"],
    [`x.${Buffer.from("[1,2]").toString("base64url")}.y`, "an array payload"],
    [`x.${Buffer.from("{oops").toString("base64url")}.y`, "not JSON"],
    [`x.${Buffer.from([0xff, 0xfe]).toString("base64url")}.y`, "not UTF-8"],
  ])("refuses %j (%s)", (token) => {
    expect(decodeJwtPayload(token)).toBeNull();
  });

  it("tells admins and expired tokens", () => {
    const claims = decodeJwtPayload(makeToken({ sub: "a", roles: ["admin"], exp: 100 }));
    expect(isAdmin(claims)).toBe(true);
    expect(isAdmin(decodeJwtPayload(makeToken({ sub: "a", roles: ["user"] })))).toBe(false);
    expect(isAdmin(null)).toBe(false);
    expect(isExpired(claims!, 99_000)).toBe(false);
    expect(isExpired(claims!, 100_000)).toBe(true);
    expect(isExpired({ sub: "a", roles: [], exp: null }, Date.now())).toBe(false);
  });
});

describe("tokenFromFragment", () => {
  it("takes the token and leaves the rest of the fragment", () => {
    expect(tokenFromFragment("#token=abc.def.ghi")).toEqual({ token: "abc.def.ghi", rest: "" });
    expect(tokenFromFragment("#token=abc&section=history")).toEqual({
      token: "abc",
      rest: "#section=history",
    });
  });

  it("leaves fragments without a token alone", () => {
    expect(tokenFromFragment("")).toEqual({ token: null, rest: "" });
    expect(tokenFromFragment("#main")).toEqual({ token: null, rest: "#main" });
  });

  it("treats an empty token as none but still removes it", () => {
    expect(tokenFromFragment("#token=")).toEqual({ token: null, rest: "" });
  });
});

describe("consumeFragmentToken", () => {
  const token = makeToken({ sub: "dev-user" });

  function run(hash: string, dev: boolean) {
    const storage = memoryStorage();
    const store = new TokenStore(storage);
    const history = { state: { keep: 1 }, replaceState: vi.fn() };
    consumeFragmentToken(
      { pathname: "/credits", search: "?returnTo=%2Fchat", hash },
      history,
      store,
      dev,
    );
    return { storage, store, history };
  }

  it("in development stores the token and removes the fragment from the address", () => {
    const { storage, store, history } = run(`#token=${token}`, true);
    expect(store.get()).toBe(token);
    expect(storage.data[TOKEN_STORAGE_KEY]).toBe(token);
    expect(history.replaceState).toHaveBeenCalledWith({ keep: 1 }, "", "/credits?returnTo=%2Fchat");
  });

  it("outside development removes the fragment but never uses the token", () => {
    const { storage, store, history } = run(`#token=${token}`, false);
    expect(store.get()).toBeNull();
    expect(storage.data).toEqual({});
    expect(history.replaceState).toHaveBeenCalledWith({ keep: 1 }, "", "/credits?returnTo=%2Fchat");
  });

  it("leaves an address without a token untouched", () => {
    const { history } = run("#main", true);
    expect(history.replaceState).not.toHaveBeenCalled();
  });
});

describe("TokenStore", () => {
  it("starts from sessionStorage and tells listeners of changes", () => {
    const storage = memoryStorage({ [TOKEN_STORAGE_KEY]: "stored" });
    const store = new TokenStore(storage);
    expect(store.get()).toBe("stored");
    const seen: (string | null)[] = [];
    const stop = store.subscribe((t) => seen.push(t));
    store.set("fresh");
    store.clear();
    stop();
    store.set("unheard");
    expect(seen).toEqual(["fresh", null]);
    expect(storage.data[TOKEN_STORAGE_KEY]).toBe("unheard");
  });

  it("works without storage (a blocked frame)", () => {
    const store = new TokenStore(null);
    store.set("t");
    expect(store.get()).toBe("t");
  });

  it("survives storage that throws", () => {
    const throwing: TokenStorage = {
      getItem: () => {
        throw new Error("blocked");
      },
      setItem: () => {
        throw new Error("blocked");
      },
      removeItem: () => {
        throw new Error("blocked");
      },
    };
    const store = new TokenStore(throwing);
    expect(store.get()).toBeNull();
    store.set("t");
    expect(store.get()).toBe("t");
    store.clear();
    expect(store.get()).toBeNull();
  });
});

describe("host tokens by postMessage", () => {
  function framedWindow() {
    const parent = { postMessage: vi.fn() };
    let handler: ((event: MessageEvent) => void) | null = null;
    const win: FrameWindow = {
      parent,
      addEventListener: (_type, listener) => {
        handler = listener;
      },
      removeEventListener: (_type, listener) => {
        if (handler === listener) {
          handler = null;
        }
      },
    };
    const send = (data: unknown, origin: string, source: unknown = parent) =>
      handler?.({ data, origin, source } as unknown as MessageEvent);
    return { win, parent, send, listening: () => handler !== null };
  }

  it("knows the embedder's origin from the referrer only when framed", () => {
    const { win } = framedWindow();
    expect(embedderOrigin(win, {}, "https://app.example.test/chat?x=1")).toBe(
      "https://app.example.test",
    );
    expect(embedderOrigin(win, win.parent, "https://app.example.test/")).toBeNull();
    expect(embedderOrigin(win, {}, "")).toBeNull();
    expect(embedderOrigin(win, {}, "not a url")).toBeNull();
  });

  it("asks the parent for a token and takes it from that origin only", () => {
    const { win, parent, send, listening } = framedWindow();
    const store = new TokenStore(null);
    const host = listenForHostToken(win, "https://app.example.test", store);
    expect(parent.postMessage).toHaveBeenCalledWith(
      { type: "billing:token-request" },
      "https://app.example.test",
    );

    send({ type: "billing:token", token: "evil" }, "https://evil.test");
    send({ type: "billing:token", token: "other-frame" }, "https://app.example.test", {});
    send({ type: "something-else", token: "x" }, "https://app.example.test");
    send("billing:token", "https://app.example.test");
    send({ type: "billing:token", token: 42 }, "https://app.example.test");
    expect(store.get()).toBeNull();

    send({ type: "billing:token", token: "good" }, "https://app.example.test");
    expect(store.get()).toBe("good");

    host.request();
    expect(parent.postMessage).toHaveBeenCalledTimes(2);
    host.stop();
    expect(listening()).toBe(false);
  });
});
