import { describe, expect, it } from "vitest";

import {
  draftOf,
  parseAllowlist,
  parsePercentage,
  reasonProblem,
  switchChanges,
} from "../src/switches";
import type { AdminFeatures } from "../src/types";
import { FEATURES_ON } from "./backend";

const FEATURES: AdminFeatures = { ...FEATURES_ON, shadowAllowlist: ["u1"], updatedAt: {} };

describe("switchChanges", () => {
  it("sends nothing when nothing changed", () => {
    expect(switchChanges(FEATURES, draftOf(FEATURES))).toEqual({ ok: true, changes: {} });
  });

  it("sends only the switches that differ", () => {
    const draft = { ...draftOf(FEATURES), purchasesEnabled: false, rolloutPercentage: "25" };
    expect(switchChanges(FEATURES, draft)).toEqual({
      ok: true,
      changes: { purchasesEnabled: false, rolloutPercentage: 25 },
    });
  });

  it("never sends a switch the deployment forces", () => {
    const forced = { ...FEATURES, forced: ["purchasesEnabled", "rolloutPercentage"] };
    const draft = { ...draftOf(forced), purchasesEnabled: false, rolloutPercentage: "abc" };
    expect(switchChanges(forced, draft)).toEqual({ ok: true, changes: {} });
  });

  it("refuses a percentage outside 0..100", () => {
    for (const value of ["101", "-1", "5.5", "", "abc"]) {
      const result = switchChanges(FEATURES, { ...draftOf(FEATURES), rolloutPercentage: value });
      expect(result.ok).toBe(false);
    }
  });

  it("compares the allowlist as a list of ids", () => {
    const same = { ...draftOf(FEATURES), shadowAllowlist: " u1 \n\n" };
    expect(switchChanges(FEATURES, same)).toEqual({ ok: true, changes: {} });
    const more = { ...draftOf(FEATURES), shadowAllowlist: "u1\nu2, u3\nu2" };
    expect(switchChanges(FEATURES, more)).toEqual({
      ok: true,
      changes: { shadowAllowlist: ["u1", "u2", "u3"] },
    });
  });
});

describe("form fields", () => {
  it("parses percentages", () => {
    expect(parsePercentage("0")).toBe(0);
    expect(parsePercentage(" 100 ")).toBe(100);
    expect(parsePercentage("1000")).toBeNull();
  });

  it("parses allowlists", () => {
    expect(parseAllowlist("")).toEqual([]);
    expect(parseAllowlist("a,b\nb")).toEqual(["a", "b"]);
  });

  it("asks for a reason of 3 to 500 characters, as checkout does", () => {
    expect(reasonProblem("  ab ")).not.toBeNull();
    expect(reasonProblem("abc")).toBeNull();
    expect(reasonProblem("x".repeat(501))).not.toBeNull();
  });
});
