/**
 * The Credits page's query string: the 402 path
 * (`?returnTo=/chat&required=<millicredits>&current=<millicredits>`) and checkout's return
 * (`checkout=success&purchase=<id>` or `checkout=cancelled`, appended by checkout).
 */

import { safeReturnTo } from "./returnTo";

export type CheckoutReturn =
  { kind: "success"; purchaseId: string } | { kind: "cancelled" } | { kind: "none" };

export interface CreditsQuery {
  /** A same-origin path to go back to, or null (absent or refused). */
  returnTo: string | null;
  /** The product sent the user here because a call could not be paid (the 402 path). */
  cameForCredits: boolean;
  requiredMillicredits: number | null;
  currentMillicredits: number | null;
  checkout: CheckoutReturn;
}

const CHECKOUT_PARAMS = ["checkout", "purchase"];
const MAX_PURCHASE_ID_LENGTH = 100;

function millicredits(value: string | null): number | null {
  if (value === null || !/^\d{1,15}$/.test(value)) {
    return null;
  }
  return Number(value);
}

function checkoutReturn(params: URLSearchParams): CheckoutReturn {
  const outcome = params.get("checkout");
  const purchaseId = params.get("purchase");
  if (
    outcome === "success" &&
    purchaseId !== null &&
    purchaseId.length > 0 &&
    purchaseId.length <= MAX_PURCHASE_ID_LENGTH
  ) {
    return { kind: "success", purchaseId };
  }
  if (outcome === "cancelled") {
    return { kind: "cancelled" };
  }
  return { kind: "none" };
}

export function parseCreditsQuery(search: string): CreditsQuery {
  const params = new URLSearchParams(search);
  const required = millicredits(params.get("required"));
  return {
    returnTo: safeReturnTo(params.get("returnTo")),
    cameForCredits: params.has("returnTo") || required !== null,
    requiredMillicredits: required,
    currentMillicredits: millicredits(params.get("current")),
    checkout: checkoutReturn(params),
  };
}

/** The query without checkout's parameters ("" when nothing is left); returnTo stays. */
export function withoutCheckoutParams(search: string): string {
  const params = new URLSearchParams(search);
  for (const name of CHECKOUT_PARAMS) {
    params.delete(name);
  }
  const rest = params.toString();
  return rest ? `?${rest}` : "";
}

/** What the user still needs, in millicredits (never negative), when both are known. */
export function missingMillicredits(query: CreditsQuery): number | null {
  const { requiredMillicredits: required, currentMillicredits: current } = query;
  if (required === null || current === null) {
    return null;
  }
  return Math.max(0, required - current);
}
