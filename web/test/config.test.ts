import { describe, expect, it } from "vitest";

import { ConfigError, loadConfig, parseConfig } from "../src/config";
import { json } from "./helpers";

describe("parseConfig", () => {
  it("reads every field and trims trailing slashes of base URLs", () => {
    expect(
      parseConfig({
        checkoutUrl: "http://127.0.0.1:8101/",
        ledgerUrl: "",
        meteringUrl: "https://api.example.test/metering",
        reconcilerUrl: "http://127.0.0.1:8105",
        pricingUrl: "https://example.test/pricing",
        termsUrl: "",
        refundPolicyUrl: "https://example.test/refunds",
        dev: true,
        productName: " Acme Chat ",
      }),
    ).toEqual({
      checkoutUrl: "http://127.0.0.1:8101",
      ledgerUrl: "",
      meteringUrl: "https://api.example.test/metering",
      reconcilerUrl: "http://127.0.0.1:8105",
      pricingUrl: "https://example.test/pricing",
      termsUrl: "",
      refundPolicyUrl: "https://example.test/refunds",
      dev: true,
      productName: "Acme Chat",
    });
  });

  it("defaults to same-origin services, no dev sign-in and a generic product name", () => {
    expect(parseConfig({})).toMatchObject({
      checkoutUrl: "",
      dev: false,
      productName: "your product",
    });
    expect(parseConfig({ dev: "true" }).dev).toBe(false);
  });

  it.each<[unknown, string]>([
    [[], "an array"],
    [null, "null"],
    [{ checkoutUrl: 5 }, "a number URL"],
    [{ ledgerUrl: "/relative" }, "a relative URL"],
    [{ pricingUrl: "javascript:alert(1)" }, "a script URL"],
  ])("refuses %j (%s)", (raw) => {
    expect(() => parseConfig(raw)).toThrow(ConfigError);
  });
});

describe("loadConfig", () => {
  it("fetches /config.json from the page's origin", async () => {
    const urls: string[] = [];
    const fetcher = (async (url: string) => {
      urls.push(url);
      return json({ dev: true });
    }) as unknown as typeof fetch;
    expect((await loadConfig(fetcher)).dev).toBe(true);
    expect(urls).toEqual(["/config.json"]);
  });

  it("fails on a missing config", async () => {
    const fetcher = (async () => new Response("", { status: 404 })) as unknown as typeof fetch;
    await expect(loadConfig(fetcher)).rejects.toThrow(ConfigError);
  });
});
