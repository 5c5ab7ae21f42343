import type {
  AdminFeatures,
  Balance,
  Features,
  LedgerEntry,
  Package,
  Purchase,
} from "../src/types";
import { fakeFetch, json, type Call } from "./helpers";

export const PACKAGES: Package[] = [
  {
    code: "starter",
    name: "Starter",
    priceCents: 999,
    currency: "usd",
    credits: 9990,
    bonusCredits: 0,
  },
  {
    code: "growth",
    name: "Growth",
    priceCents: 2499,
    currency: "usd",
    credits: 24990,
    bonusCredits: 1250,
  },
];

export const FEATURES_ON: Features = {
  billingEnabled: true,
  purchasesEnabled: true,
  chargingEnabled: true,
  shadowBilling: false,
  rolloutPercentage: 100,
  forced: [],
};

export function balance(millicredits: number, held = 0): Balance {
  return {
    userId: "user-1",
    balanceMillicredits: millicredits,
    heldMillicredits: held,
    availableMillicredits: millicredits - held,
    balanceCredits: (millicredits / 1000).toFixed(3),
    availableCredits: ((millicredits - held) / 1000).toFixed(3),
  };
}

export function entry(
  id: string,
  kind: string,
  amount: number,
  after: number,
  model?: string,
): LedgerEntry {
  return {
    id,
    kind,
    amountMillicredits: amount,
    balanceAfterMillicredits: after,
    referenceId: `ref-${id}`,
    correlationId: null,
    createdAt: "2025-01-10T12:00:00Z",
    ...(model ? { model } : {}),
  };
}

export function purchase(
  id: string,
  status: Purchase["status"],
  receiptUrl: string | null = null,
): Purchase {
  return {
    purchaseId: id,
    userId: "user-1",
    packageCode: "starter",
    priceCents: 999,
    currency: "usd",
    credits: 9990,
    bonusCredits: 0,
    grantMillicredits: 9_990_000,
    status,
    checkoutUrl: null,
    stripeSessionId: null,
    refundedMillicredits: 0,
    createdAt: "2025-01-10T12:00:00Z",
    updatedAt: "2025-01-10T12:00:00Z",
    receiptUrl,
  };
}

export const ADMIN_FEATURES: AdminFeatures = {
  ...FEATURES_ON,
  forced: ["chargingEnabled"],
  shadowAllowlist: [],
  updatedAt: { billingEnabled: null },
};

type Handler = (call: Call) => Response | Promise<Response>;

/** The five services with sensible answers; `routes` replace or add some. */
export function backend(routes: Record<string, Handler> = {}) {
  return fakeFetch({
    "GET http://checkout.test/api/v1/meta/features": () => json(FEATURES_ON),
    "GET http://checkout.test/api/packages": () => json(PACKAGES),
    "GET http://ledger.test/api/balance": () => json(balance(12_500_000, 500_000)),
    "GET http://ledger.test/api/ledger": () =>
      json({ entries: [entry("e1", "purchase", 9_990_000, 12_500_000)], nextCursor: null }),
    "GET http://checkout.test/api/purchases": () =>
      json({
        purchases: [purchase("p1", "fulfilled", "https://pay.example.test/receipts/1")],
        nextCursor: null,
      }),
    "GET http://metering.test/api/usage": () =>
      json({ from: "2025-01-01", to: "2025-01-31", models: [], totalChargedMillicredits: 0 }),
    "GET http://checkout.test/api/admin/features": () => json(ADMIN_FEATURES),
    "GET http://reconciler.test/api/admin/reconciliation/latest": () =>
      json({ error: "no_runs", message: "no reconciliation run has finished yet" }, 404),
    "GET http://metering.test/api/admin/review-flags": () => json({ flags: [] }),
    "GET http://metering.test/api/admin/paused-users": () => json({ users: [] }),
    ...routes,
  });
}
