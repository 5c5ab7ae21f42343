import { describe, expect, it } from "vitest";

import {
  approxUsd,
  creditsText,
  formatCredits,
  formatPrice,
  formatWholeCredits,
  signedCreditsText,
} from "../src/money";

describe("formatCredits", () => {
  it.each([
    [0, "0"],
    [1, "0.001"],
    [12_500, "12.5"],
    [50_000, "50"],
    [9_990_000, "9,990"],
    [1_234_567_890, "1,234,567.89"],
    [-50_000, "-50"],
    [-1, "-0.001"],
    [999_999, "999.999"],
  ])("%i millicredits -> %s", (millicredits, expected) => {
    expect(formatCredits(millicredits)).toBe(expected);
  });

  it("refuses a non-integer amount rather than showing a float artefact", () => {
    expect(() => formatCredits(0.5)).toThrow(RangeError);
    expect(() => formatCredits(Number.NaN)).toThrow(RangeError);
  });
});

describe("credit phrases", () => {
  it("uses the singular only for exactly one credit", () => {
    expect(creditsText(1000)).toBe("1 credit");
    expect(creditsText(1500)).toBe("1.5 credits");
    expect(creditsText(0)).toBe("0 credits");
  });

  it("marks additions with a plus and keeps the minus of spending", () => {
    expect(signedCreditsText(9_990_000)).toBe("+9,990 credits");
    expect(signedCreditsText(-50_000)).toBe("-50 credits");
    expect(signedCreditsText(0)).toBe("0 credits");
  });

  it("groups whole catalog credits", () => {
    expect(formatWholeCredits(99_990)).toBe("99,990");
    expect(formatWholeCredits(0)).toBe("0");
  });
});

describe("approxUsd", () => {
  it.each([
    [9_990_000, "≈ $9.99"], // 9,990 credits
    [1_000_000, "≈ $1.00"],
    [0, "≈ $0.00"],
    [5_000, "≈ $0.01"], // half a cent rounds up
    [4_999, "< $0.01"],
    [1, "< $0.01"],
    [1_234_567_890_000, "≈ $1,234,567.89"],
    [-2_500_000, "≈ -$2.50"],
    [-1, "> -$0.01"],
    [12_345, "≈ $0.01"],
    [15_000, "≈ $0.02"],
  ])("%i millicredits -> %s", (millicredits, expected) => {
    expect(approxUsd(millicredits)).toBe(expected);
  });
});

describe("formatPrice", () => {
  it("shows catalog prices exactly", () => {
    expect(formatPrice(999, "usd")).toBe("$9.99");
    expect(formatPrice(9999, "usd")).toBe("$99.99");
    expect(formatPrice(100_000, "usd")).toBe("$1,000.00");
  });

  it("respects currencies without minor units", () => {
    expect(formatPrice(500, "jpy")).toBe("¥500");
  });

  it("falls back to the code for an unknown currency", () => {
    expect(formatPrice(1234, "not-a-code")).toBe("12.34 NOT-A-CODE");
  });
});
