import { describe, expect, it } from "vitest";

import { missingMillicredits, parseCreditsQuery, withoutCheckoutParams } from "../src/creditsQuery";

describe("parseCreditsQuery", () => {
  it("reads the 402 path", () => {
    const query = parseCreditsQuery("?returnTo=%2Fchat&required=60000&current=12500");
    expect(query).toEqual({
      returnTo: "/chat",
      cameForCredits: true,
      requiredMillicredits: 60_000,
      currentMillicredits: 12_500,
      checkout: { kind: "none" },
    });
    expect(missingMillicredits(query)).toBe(47_500);
  });

  it("accepts an unencoded returnTo as the product may send it", () => {
    expect(parseCreditsQuery("?returnTo=/chat").returnTo).toBe("/chat");
  });

  it("ignores an unsafe returnTo but still knows the user came for credits", () => {
    const query = parseCreditsQuery("?returnTo=%2F%2Fevil.test");
    expect(query.returnTo).toBeNull();
    expect(query.cameForCredits).toBe(true);
  });

  it("ignores amounts that are not whole millicredits", () => {
    const query = parseCreditsQuery("?required=12.5&current=-3");
    expect(query.requiredMillicredits).toBeNull();
    expect(query.currentMillicredits).toBeNull();
    expect(missingMillicredits(query)).toBeNull();
  });

  it("never reports a negative shortfall", () => {
    expect(missingMillicredits(parseCreditsQuery("?required=100&current=500"))).toBe(0);
  });

  it("reads checkout's success return as appended to the page's returnTo", () => {
    const query = parseCreditsQuery("?returnTo=%2Fchat&checkout=success&purchase=pur_123");
    expect(query.checkout).toEqual({ kind: "success", purchaseId: "pur_123" });
    expect(query.returnTo).toBe("/chat");
  });

  it("reads a cancelled checkout, and a success without a purchase as nothing", () => {
    expect(parseCreditsQuery("?checkout=cancelled&purchase=p1").checkout).toEqual({
      kind: "cancelled",
    });
    expect(parseCreditsQuery("?checkout=success").checkout).toEqual({ kind: "none" });
    expect(parseCreditsQuery("").cameForCredits).toBe(false);
  });
});

describe("withoutCheckoutParams", () => {
  it("drops checkout's parameters and keeps returnTo", () => {
    expect(withoutCheckoutParams("?returnTo=%2Fchat&checkout=success&purchase=p1")).toBe(
      "?returnTo=%2Fchat",
    );
    expect(withoutCheckoutParams("?checkout=cancelled&purchase=p1")).toBe("");
  });
});
