import { act, cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { TOKEN_STORAGE_KEY, TokenStore, type TokenStorage } from "../src/auth";
import { App } from "../src/components/App";
import { backend, balance, entry, FEATURES_ON, purchase } from "./backend";
import { CONFIG, json, makeToken } from "./helpers";

const USER_TOKEN = makeToken({ sub: "user-1", roles: [], exp: 4_000_000_000 });
const NOW = () => new Date("2025-01-15T10:00:00Z");

function memoryStorage(token: string | null): TokenStorage {
  const data: Record<string, string> = token ? { [TOKEN_STORAGE_KEY]: token } : {};
  return {
    getItem: (k) => data[k] ?? null,
    setItem: (k, v) => {
      data[k] = v;
    },
    removeItem: (k) => {
      delete data[k];
    },
  };
}

function start(url: string, fetcher: typeof fetch, token: string | null = USER_TOKEN) {
  window.history.replaceState(null, "", url);
  const tokens = new TokenStore(memoryStorage(token));
  const leaveTo = vi.fn();
  render(<App config={CONFIG} tokens={tokens} fetch={fetcher} leaveTo={leaveTo} now={NOW} />);
  return { tokens, leaveTo };
}

beforeEach(() => {
  vi.spyOn(console, "error");
});

afterEach(() => {
  cleanup();
  // React reports rendering problems through console.error; none is expected.
  expect(console.error).not.toHaveBeenCalled();
});

describe("the Credits page", () => {
  it("shows the balance in credits and approximate dollars, the trust messages and policy links", async () => {
    const { fetch } = backend();
    start("/credits", fetch);
    const balanceBox = await screen.findByTestId("balance");
    await waitFor(() => expect(balanceBox.textContent).toContain("12,500 credits"));
    expect(within(balanceBox).getByTestId("balance-usd").textContent).toBe("≈ $12.50");
    expect(within(balanceBox).getByTestId("held-credits").textContent).toBe("500 credits");
    expect(within(balanceBox).getByTestId("available-credits").textContent).toContain(
      "12,000 credits",
    );
    for (const message of [
      "Credits are prepaid. 1,000 Credits = $1.00",
      "You only pay for actual token usage",
      "USD equivalent is approximate",
    ]) {
      expect(screen.getByText(message)).toBeTruthy();
    }
    expect(screen.getByRole("link", { name: /^Terms of service/ }).getAttribute("href")).toBe(
      CONFIG.termsUrl,
    );
    expect(screen.getByRole("link", { name: /^Refund policy/ }).getAttribute("href")).toBe(
      CONFIG.refundPolicyUrl,
    );
    expect(screen.getByRole("link", { name: /^Pricing/ }).getAttribute("href")).toBe(
      CONFIG.pricingUrl,
    );
    expect(screen.getByTestId("user-id").textContent).toBe("user-1");
    expect(screen.queryByRole("link", { name: "Admin" })).toBeNull();
  });

  it("buys a package: one idempotent purchase, then off to checkout, returning to this page", async () => {
    const { fetch, calls } = backend({
      "POST http://checkout.test/api/purchases": () =>
        json(
          { purchaseId: "p9", checkoutUrl: "https://checkout.stripe.test/c/p9", status: "pending" },
          201,
        ),
    });
    const { leaveTo } = start("/credits?returnTo=%2Fchat", fetch);
    const buy = await screen.findByRole("button", { name: "Buy Growth" });
    expect(screen.getByTestId("package-growth").textContent).toContain("$24.99");
    expect(screen.getByTestId("package-growth").textContent).toContain("+ 1,250 bonus credits");
    fireEvent.click(buy);
    await waitFor(() => expect(leaveTo).toHaveBeenCalledWith("https://checkout.stripe.test/c/p9"));
    const posts = calls.filter((c) => c.method === "POST");
    expect(posts).toHaveLength(1);
    expect(posts[0]!.body).toEqual({
      packageCode: "growth",
      returnTo: "/credits?returnTo=%2Fchat",
    });
    expect(posts[0]!.headers["Idempotency-Key"]).toMatch(/^[0-9a-f-]{36}$/);
    expect(posts[0]!.headers.Authorization).toBe(`Bearer ${USER_TOKEN}`);
    // The page is being left: no second purchase from a double click.
    expect(
      (screen.getByRole("button", { name: "Buy Starter" }) as HTMLButtonElement).disabled,
    ).toBe(true);
  });

  it("uses a new Idempotency-Key for each click", async () => {
    let attempt = 0;
    const { fetch, calls } = backend({
      "POST http://checkout.test/api/purchases": () =>
        ++attempt === 1
          ? json({ error: "stripe_unavailable", message: "try again" }, 502)
          : json(
              { purchaseId: "p", checkoutUrl: "https://checkout.stripe.test/c", status: "pending" },
              201,
            ),
    });
    const { leaveTo } = start("/credits", fetch);
    fireEvent.click(await screen.findByRole("button", { name: "Buy Starter" }));
    expect((await screen.findByRole("alert")).textContent).toContain(
      "Checkout could not be started",
    );
    fireEvent.click(screen.getByRole("button", { name: "Buy Starter" }));
    await waitFor(() => expect(leaveTo).toHaveBeenCalled());
    const keys = calls.filter((c) => c.method === "POST").map((c) => c.headers["Idempotency-Key"]);
    expect(keys).toHaveLength(2);
    expect(keys[0]).not.toBe(keys[1]);
    const body = calls.find((c) => c.method === "POST")!.body;
    expect(body).toEqual({ packageCode: "starter", returnTo: "/credits" });
  });

  it("never follows a checkout address that is not a web URL", async () => {
    const { fetch } = backend({
      "POST http://checkout.test/api/purchases": () =>
        json({ purchaseId: "p", checkoutUrl: "javascript:alert(1)", status: "pending" }, 201),
    });
    const { leaveTo } = start("/credits", fetch);
    fireEvent.click(await screen.findByRole("button", { name: "Buy Starter" }));
    expect((await screen.findByRole("alert")).textContent).toContain(
      "Checkout could not be started",
    );
    expect(leaveTo).not.toHaveBeenCalled();
  });

  it("disables Buy when checkout answers purchases_disabled", async () => {
    const { fetch } = backend({
      "POST http://checkout.test/api/purchases": () =>
        json({ error: "purchases_disabled", message: "purchases are switched off" }, 503),
    });
    const { leaveTo } = start("/credits", fetch);
    fireEvent.click(await screen.findByRole("button", { name: "Buy Starter" }));
    expect((await screen.findByTestId("purchases-paused")).textContent).toContain(
      "Purchases are paused",
    );
    for (const name of ["Buy Starter", "Buy Growth"]) {
      expect((screen.getByRole("button", { name }) as HTMLButtonElement).disabled).toBe(true);
    }
    expect(leaveTo).not.toHaveBeenCalled();
  });

  it("shows the kill-switch banner and disables Buy while billing is paused", async () => {
    const { fetch } = backend({
      "GET http://checkout.test/api/v1/meta/features": () =>
        json({ ...FEATURES_ON, billingEnabled: false }),
    });
    start("/credits", fetch);
    const banner = await screen.findByTestId("billing-paused-banner");
    expect(banner.getAttribute("role")).toBe("status");
    expect(banner.textContent).toBe(
      "Billing is paused. AI features remain available with no charges.",
    );
    await waitFor(() =>
      expect(
        (screen.getByRole("button", { name: "Buy Starter" }) as HTMLButtonElement).disabled,
      ).toBe(true),
    );
  });

  it("on the 402 path says credits are needed and how many, with the way back", async () => {
    const { fetch } = backend();
    start("/credits?returnTo=%2Fchat&required=60000&current=12500", fetch);
    const box = await screen.findByTestId("need-credits");
    expect(box.textContent).toContain("You need more credits to continue");
    expect(box.textContent).toContain("Add at least 47.5 credits.");
    expect(screen.getByRole("link", { name: "Back to /chat" }).getAttribute("href")).toBe("/chat");
  });

  it("offers no way back to another site", async () => {
    const { fetch } = backend();
    start("/credits?returnTo=%2F%2Fevil.test%2Fx", fetch);
    await screen.findByTestId("need-credits");
    expect(screen.queryByTestId("back-to-return")).toBeNull();
  });

  it("after a successful checkout waits for the grant, then shows it and the new balance", async () => {
    let polls = 0;
    let granted = false;
    const { fetch, calls } = backend({
      "GET http://checkout.test/api/purchases/p42": () => {
        polls += 1;
        granted = polls >= 2;
        return json(purchase("p42", granted ? "fulfilled" : "paid"));
      },
      "GET http://ledger.test/api/balance": () => json(balance(granted ? 22_490_000 : 12_500_000)),
    });
    start("/credits?returnTo=%2Fchat&checkout=success&purchase=p42", fetch);
    expect((await screen.findByTestId("checkout-status")).textContent).toContain(
      "Adding your credits",
    );
    // checkout's parameters leave the address bar at once; returnTo stays.
    await waitFor(() => expect(window.location.search).toBe("?returnTo=%2Fchat"));
    await waitFor(
      () =>
        expect(screen.getByTestId("checkout-status").textContent).toBe(
          "Payment received: 9,990 credits added",
        ),
      { timeout: 4000 },
    );
    await waitFor(() =>
      expect(screen.getByTestId("balance").textContent).toContain("22,490 credits"),
    );
    expect(polls).toBe(2);
    expect(screen.queryByTestId("need-credits")).toBeNull();
    expect(screen.getByRole("link", { name: "Back to /chat" })).toBeTruthy();
    // History and purchases were read again for the new entry.
    expect(
      calls.filter((c) => c.url.startsWith("http://ledger.test/api/ledger")).length,
    ).toBeGreaterThanOrEqual(2);
  });

  it("says so when the payment failed", async () => {
    const { fetch } = backend({
      "GET http://checkout.test/api/purchases/p7": () => json(purchase("p7", "failed")),
    });
    start("/credits?checkout=success&purchase=p7", fetch);
    await waitFor(() =>
      expect(screen.getByTestId("checkout-status").textContent).toContain("did not go through"),
    );
  });

  it("after a cancelled checkout says nothing was charged and cleans the address", async () => {
    const { fetch } = backend();
    start("/credits?returnTo=%2Fchat&checkout=cancelled&purchase=p1", fetch);
    expect((await screen.findByTestId("checkout-status")).textContent).toBe(
      "Checkout cancelled, nothing was charged.",
    );
    await waitFor(() => expect(window.location.search).toBe("?returnTo=%2Fchat"));
    expect(await screen.findByTestId("balance")).toBeTruthy();
  });

  it("pages through history with Older and Newer", async () => {
    const { fetch, calls } = backend({
      "GET http://ledger.test/api/ledger?limit=20": () =>
        json({
          entries: [entry("new1", "usage", -50_000, 12_450_000, "gpt-4o")],
          nextCursor: "cur-1",
        }),
      "GET http://ledger.test/api/ledger?limit=20&cursor=cur-1": () =>
        json({ entries: [entry("old1", "purchase", 9_990_000, 9_990_000)], nextCursor: null }),
    });
    start("/credits", fetch);
    const table = await screen.findByTestId("history-table");
    expect(within(table).getByRole("cell", { name: "gpt-4o" })).toBeTruthy();
    expect(within(table).getByRole("cell", { name: "-50 credits" })).toBeTruthy();
    expect(within(table).getByText("Credit movements, newest first").tagName).toBe("CAPTION");
    const newerButton = screen.getByRole("button", { name: "Newer entries" }) as HTMLButtonElement;
    expect(newerButton.disabled).toBe(true);

    fireEvent.click(screen.getByRole("button", { name: "Older entries" }));
    await waitFor(() =>
      expect(screen.getByTestId("history-table").textContent).toContain("+9,990 credits"),
    );
    expect(
      (screen.getByRole("button", { name: "Older entries" }) as HTMLButtonElement).disabled,
    ).toBe(true);
    expect(newerButton.disabled).toBe(false);

    fireEvent.click(newerButton);
    await waitFor(() =>
      expect(screen.getByTestId("history-table").textContent).toContain("gpt-4o"),
    );
    const ledgerCalls = calls
      .filter((c) => c.url.startsWith("http://ledger.test/api/ledger"))
      .map((c) => c.url);
    expect(ledgerCalls).toEqual([
      "http://ledger.test/api/ledger?limit=20",
      "http://ledger.test/api/ledger?limit=20&cursor=cur-1",
      "http://ledger.test/api/ledger?limit=20",
    ]);
  });

  it("lists purchases with their receipt links", async () => {
    const { fetch } = backend();
    start("/credits", fetch);
    const table = await screen.findByTestId("purchases-table");
    const receipt = within(table).getByRole("link", { name: /^Receipt for the Starter purchase/ });
    expect(receipt.getAttribute("href")).toBe("https://pay.example.test/receipts/1");
    expect(receipt.getAttribute("rel")).toContain("noopener");
  });

  it("reads usage for the chosen month as whole days, first to last", async () => {
    const { fetch, calls } = backend({
      "GET http://metering.test/api/usage?from=2024-12-01&to=2024-12-31": () =>
        json({
          from: "2024-12-01",
          to: "2024-12-31",
          models: [
            {
              model: "gpt-4o",
              calls: 3,
              inputTokens: 3000,
              outputTokens: 1500,
              chargedMillicredits: 150_000,
            },
          ],
          totalChargedMillicredits: 150_000,
        }),
    });
    start("/credits", fetch);
    const month = (await screen.findByLabelText("Month")) as HTMLInputElement;
    expect(month.value).toBe("2025-01");
    await waitFor(() =>
      expect(calls.map((c) => c.url)).toContain(
        "http://metering.test/api/usage?from=2025-01-01&to=2025-01-31",
      ),
    );
    fireEvent.change(month, { target: { value: "2024-12" } });
    const table = await screen.findByTestId("usage-table");
    expect(within(table).getByText("Usage per model, December 2024")).toBeTruthy();
    expect(within(table).getAllByText("150 credits")).toHaveLength(2);
  });

  it("downloads the month's statement with the token, as a file", async () => {
    URL.createObjectURL = vi.fn(() => "blob:stmt");
    URL.revokeObjectURL = vi.fn();
    const saved: string[] = [];
    vi.spyOn(HTMLAnchorElement.prototype, "click").mockImplementation(function (
      this: HTMLAnchorElement,
    ) {
      saved.push(`${this.download} ${this.href}`);
    });
    const { fetch, calls } = backend({
      "GET http://ledger.test/api/statements/2025-01.pdf": () =>
        new Response("%PDF-1.4", { headers: { "Content-Type": "application/pdf" } }),
    });
    start("/credits", fetch);
    fireEvent.click(await screen.findByRole("button", { name: "Download PDF statement" }));
    await waitFor(() => expect(saved).toEqual(["statement-2025-01.pdf blob:stmt"]));
    const call = calls.find((c) => c.url.endsWith(".pdf"))!;
    expect(call.headers.Authorization).toBe(`Bearer ${USER_TOKEN}`);
  });

  it("says why a statement download failed", async () => {
    const { fetch } = backend({
      "GET http://ledger.test/api/statements/2025-01.csv": () =>
        json({ error: "invalid_month", message: "no such month" }, 422),
    });
    start("/credits", fetch);
    fireEvent.click(await screen.findByRole("button", { name: "Download CSV statement" }));
    expect((await screen.findByRole("alert")).textContent).toContain("no such month");
  });
});

describe("signing in", () => {
  it("without a token asks the user to sign in from the product", async () => {
    const { fetch, calls } = backend();
    start("/credits", fetch, null);
    expect(screen.getByRole("heading", { name: "Sign in from Acme Chat" })).toBeTruthy();
    await waitFor(() => expect(calls.length).toBeGreaterThan(0));
    // Only the public switches are read before sign-in.
    expect(calls.every((c) => c.url.endsWith("/api/v1/meta/features"))).toBe(true);
  });

  it("treats an expired token as none", () => {
    const { fetch } = backend();
    start("/credits", fetch, makeToken({ sub: "user-1", exp: 1_000 }));
    expect(screen.getByRole("heading", { name: "Sign in from Acme Chat" })).toBeTruthy();
  });

  it("asks to sign in again when a service answers 401, and forgets the token", async () => {
    const { fetch } = backend({
      "GET http://ledger.test/api/balance": () =>
        json({ error: "unauthorized", message: "token expired" }, 401),
    });
    const { tokens } = start("/credits", fetch);
    expect(await screen.findByRole("heading", { name: "Sign in from Acme Chat" })).toBeTruthy();
    expect(tokens.get()).toBeNull();
  });

  it("signs in when the host hands over a token", async () => {
    const { fetch } = backend();
    const { tokens } = start("/credits", fetch, null);
    act(() => tokens.set(USER_TOKEN));
    expect(await screen.findByTestId("balance")).toBeTruthy();
  });
});
