import { describe, expect, it } from "vitest";

import { creditsPagePath, safeReturnTo } from "../src/returnTo";

describe("safeReturnTo", () => {
  it.each(["/", "/chat", "/chat?x=1&y=2", "/chat#part", "/a/b/c", "/%2F%2Fevil.test"])(
    "keeps the same-origin path %s",
    (path) => {
      expect(safeReturnTo(path)).toBe(path);
    },
  );

  it.each([
    ["", "empty"],
    ["chat", "relative without a slash"],
    ["//evil.test", "protocol-relative"],
    ["//evil.test/chat", "protocol-relative with a path"],
    ["/\\evil.test", "backslash read as a slash"],
    ["\\\\evil.test", "backslashes"],
    ["https://evil.test/chat", "absolute URL"],
    ["javascript:alert(1)", "script URL"],
    ["/\t/evil.test", "tab, stripped by browsers"],
    ["/\n/evil.test", "newline"],
    ["/\u0000x", "NUL"],
    ["/\u007f", "DEL"],
    [" /chat", "leading space"],
    [`/${"a".repeat(512)}`, "longer than 512 characters"],
  ])("refuses %j (%s)", (value) => {
    expect(safeReturnTo(value)).toBeNull();
  });

  it("refuses missing values", () => {
    expect(safeReturnTo(null)).toBeNull();
    expect(safeReturnTo(undefined)).toBeNull();
  });

  it("accepts exactly 512 characters", () => {
    const path = `/${"a".repeat(511)}`;
    expect(safeReturnTo(path)).toBe(path);
  });
});

describe("creditsPagePath", () => {
  it("carries returnTo encoded, for checkout to come back to", () => {
    expect(creditsPagePath("/chat")).toBe("/credits?returnTo=%2Fchat");
    expect(creditsPagePath("/chat?x=1&y=2")).toBe("/credits?returnTo=%2Fchat%3Fx%3D1%26y%3D2");
  });

  it("is the bare page without returnTo", () => {
    expect(creditsPagePath(null)).toBe("/credits");
  });
});
