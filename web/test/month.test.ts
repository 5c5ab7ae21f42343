import { describe, expect, it } from "vitest";

import { isMonth, monthLabel, monthOf, monthRange } from "../src/month";

describe("monthRange", () => {
  it("gives the first and last day, both included as metering counts them", () => {
    expect(monthRange("2025-01")).toEqual({ from: "2025-01-01", to: "2025-01-31" });
    expect(monthRange("2025-04")).toEqual({ from: "2025-04-01", to: "2025-04-30" });
    expect(monthRange("2025-12")).toEqual({ from: "2025-12-01", to: "2025-12-31" });
  });

  it("knows leap years", () => {
    expect(monthRange("2024-02")).toEqual({ from: "2024-02-01", to: "2024-02-29" });
    expect(monthRange("2023-02")).toEqual({ from: "2023-02-01", to: "2023-02-28" });
    expect(monthRange("2000-02")?.to).toBe("2000-02-29");
    expect(monthRange("1900-02")?.to).toBe("1900-02-28");
  });

  it.each(["2025-13", "2025-00", "2025-1", "25-01", "2025-01-01", "", "abcd-ef"])(
    "refuses %j",
    (value) => {
      expect(monthRange(value)).toBeNull();
      expect(isMonth(value)).toBe(false);
    },
  );
});

describe("monthOf", () => {
  it("is the UTC month, whatever the local time zone", () => {
    expect(monthOf(new Date("2025-01-31T23:30:00Z"))).toBe("2025-01");
    expect(monthOf(new Date("2025-02-01T00:00:00Z"))).toBe("2025-02");
  });
});

describe("monthLabel", () => {
  it("names the month for captions", () => {
    expect(monthLabel("2025-01")).toBe("January 2025");
    expect(monthLabel("bad")).toBe("bad");
  });
});
