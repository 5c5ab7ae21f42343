import { cleanup, fireEvent, render, screen, waitFor, within } from "@testing-library/react";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import { TokenStore } from "../src/auth";
import { App } from "../src/components/App";
import type { AdminFeatures } from "../src/types";
import { ADMIN_FEATURES, backend } from "./backend";
import { CONFIG, json, makeToken } from "./helpers";

const ADMIN_TOKEN = makeToken({ sub: "ops-1", roles: ["admin"], exp: 4_000_000_000 });
const USER_TOKEN = makeToken({ sub: "user-1", roles: [], exp: 4_000_000_000 });

function start(fetcher: typeof fetch, token = ADMIN_TOKEN) {
  window.history.replaceState(null, "", "/credits/admin");
  const tokens = new TokenStore(null);
  tokens.set(token);
  render(<App config={CONFIG} tokens={tokens} fetch={fetcher} leaveTo={vi.fn()} />);
}

beforeEach(() => {
  vi.spyOn(console, "error");
});

afterEach(() => {
  cleanup();
  expect(console.error).not.toHaveBeenCalled();
});

describe("the admin view", () => {
  it("is closed to users without the admin role, and not in their navigation", async () => {
    const { fetch, calls } = backend();
    start(fetch, USER_TOKEN);
    expect(screen.getByTestId("admin-forbidden").textContent).toContain("admin role");
    expect(screen.queryByRole("link", { name: "Admin" })).toBeNull();
    await new Promise((r) => setTimeout(r, 20));
    expect(calls.some((c) => c.url.includes("/api/admin/"))).toBe(false);
  });

  it("shows the switches, a forced one read-only with its deployment variable", async () => {
    const { fetch } = backend();
    start(fetch);
    expect(screen.getByRole("link", { name: "Admin" }).getAttribute("aria-current")).toBe("page");
    const charging = (await screen.findByRole("switch", {
      name: "Charging enabled",
    })) as HTMLInputElement;
    expect(charging.disabled).toBe(true);
    expect(charging.checked).toBe(true);
    const describedBy = charging.getAttribute("aria-describedby")!.split(" ");
    const notes = describedBy.map((id) => document.getElementById(id)?.textContent ?? "").join(" ");
    expect(notes).toContain("BILLING_CHARGING_ENABLED");
    const purchases = screen.getByRole("switch", { name: "Purchases enabled" }) as HTMLInputElement;
    expect(purchases.disabled).toBe(false);
  });

  it("changes a switch with a reason, sending only what changed", async () => {
    const patched: AdminFeatures = { ...ADMIN_FEATURES, purchasesEnabled: false };
    const { fetch, calls } = backend({
      "PATCH http://checkout.test/api/admin/features": () => json(patched),
    });
    start(fetch);
    const purchases = (await screen.findByRole("switch", {
      name: "Purchases enabled",
    })) as HTMLInputElement;
    const apply = screen.getByRole("button", { name: "Apply changes" }) as HTMLButtonElement;
    expect(apply.disabled).toBe(true);
    fireEvent.click(purchases);
    expect(apply.disabled).toBe(false);

    fireEvent.click(apply);
    expect((await screen.findByRole("alert")).textContent).toContain("reason");
    expect(calls.some((c) => c.method === "PATCH")).toBe(false);

    fireEvent.change(screen.getByLabelText(/^Reason for the change/), {
      target: { value: "incident 42: Stripe outage" },
    });
    fireEvent.click(apply);
    await waitFor(() => expect(calls.some((c) => c.method === "PATCH")).toBe(true));
    const patch = calls.find((c) => c.method === "PATCH")!;
    expect(patch.body).toEqual({ purchasesEnabled: false, reason: "incident 42: Stripe outage" });
    await waitFor(() => expect(apply.disabled).toBe(true));
    expect(purchases.checked).toBe(false);
  });

  it("shows why checkout refused a change", async () => {
    const { fetch } = backend({
      "PATCH http://checkout.test/api/admin/features": () =>
        json(
          { error: "switch_forced", message: "set by the deployment (X); change it there" },
          409,
        ),
    });
    start(fetch);
    fireEvent.click(await screen.findByRole("switch", { name: "Billing enabled" }));
    fireEvent.change(screen.getByLabelText(/^Reason for the change/), {
      target: { value: "test run" },
    });
    fireEvent.click(screen.getByRole("button", { name: "Apply changes" }));
    expect((await screen.findByRole("alert")).textContent).toContain("set by the deployment");
  });

  it("resumes a paused user with a reason", async () => {
    let paused = true;
    const { fetch, calls } = backend({
      "GET http://metering.test/api/admin/paused-users": () =>
        json({
          users: paused
            ? [
                {
                  userId: "u-9",
                  paused: true,
                  pausedAt: "2025-01-10T12:00:00Z",
                  reason: "session cap",
                },
              ]
            : [],
        }),
      "POST http://metering.test/api/admin/users/u-9/resume": () => {
        paused = false;
        return json({ userId: "u-9", paused: false });
      },
    });
    start(fetch);
    const table = await screen.findByTestId("paused-users-table");
    fireEvent.change(within(table).getByLabelText("Reason for resuming u-9"), {
      target: { value: "reviewed, legitimate load" },
    });
    fireEvent.click(within(table).getByRole("button", { name: "Resume u-9" }));
    expect(await screen.findByText("No user is paused.")).toBeTruthy();
    const post = calls.find((c) => c.method === "POST")!;
    expect(post.url).toBe("http://metering.test/api/admin/users/u-9/resume");
    expect(post.body).toEqual({ reason: "reviewed, legitimate load" });
  });

  it("shows the latest reconciliation with its findings, and review flags", async () => {
    const { fetch } = backend({
      "GET http://reconciler.test/api/admin/reconciliation/latest": () =>
        json({
          runId: "run-1",
          period: { from: "2025-01-09T00:00:00Z", to: "2025-01-10T00:00:00Z" },
          status: "findings",
          startedAt: "2025-01-10T01:00:00Z",
          finishedAt: "2025-01-10T01:00:02Z",
          durationMs: 2000,
          checks: [{ name: "balances", findings: 1 }],
          findings: [
            {
              check: "balances",
              kind: "balance_mismatch",
              userId: "u-3",
              references: ["tx-1"],
              expectedMillicredits: 1000,
              actualMillicredits: 2000,
              detail: "wallet sum differs",
            },
          ],
          stripeApiSessionsSeen: 4,
          journalChain: null,
        }),
      "GET http://metering.test/api/admin/review-flags": () =>
        json({
          flags: [
            {
              id: 1,
              userId: "u-5",
              usageId: "use-1",
              model: "gpt-4o",
              chargeMillicredits: 500_000,
              averageMillicredits: 50_000,
              recentCalls: 12,
              createdAt: "2025-01-10T12:00:00Z",
            },
          ],
        }),
    });
    start(fetch);
    expect((await screen.findByTestId("reconciliation-status")).textContent).toBe("1 finding(s)");
    const findings = screen.getByTestId("findings-table");
    expect(findings.textContent).toContain("wallet sum differs (tx-1)");
    expect(findings.textContent).toContain("2 credits");
    const flags = await screen.findByTestId("review-flags-table");
    expect(flags.textContent).toContain("500 credits");
    expect(flags.textContent).toContain("u-5");
  });

  it("says when no reconciliation has run yet", async () => {
    const { fetch } = backend();
    start(fetch);
    expect(await screen.findByText("No reconciliation run has finished yet.")).toBeTruthy();
  });
});
