import { useEffect, useState } from "react";

import { describeError } from "../api";
import type { CheckoutReturn } from "../creditsQuery";
import { useEnv } from "../env";
import { creditsText } from "../money";
import { pollPurchase, type PollOutcome } from "../polling";
import type { Purchase } from "../types";

export const CANCELLED_MESSAGE = "Checkout cancelled, nothing was charged.";
export const WAITING_MESSAGE = "Payment received by Stripe. Adding your credits…";
export const STILL_PROCESSING_MESSAGE =
  "Your payment is still processing. Your credits will appear here as soon as it completes; you can safely leave this page.";

export function paymentReceivedMessage(purchase: Purchase): string {
  return `Payment received: ${creditsText(purchase.grantMillicredits)} added`;
}

function outcomeMessage(
  outcome: PollOutcome,
): { text: string; tone: "success" | "error" | "info" } | null {
  switch (outcome.kind) {
    case "fulfilled":
      return { text: paymentReceivedMessage(outcome.purchase), tone: "success" };
    case "failed":
      return {
        text: "The payment did not go through, and no credits were added. You have not been charged for this purchase.",
        tone: "error",
      };
    case "refunded":
      return { text: "This purchase has been refunded.", tone: "info" };
    case "timeout":
      return { text: STILL_PROCESSING_MESSAGE, tone: "info" };
    case "error":
      return {
        text: `The purchase could not be checked. ${describeError(outcome.error)}`,
        tone: "error",
      };
    case "aborted":
      return null;
  }
}

/**
 * Stripe's return: polls a successful checkout's purchase until it is settled and tells
 * the page when credits were added; a cancelled checkout just says so.
 */
export function CheckoutStatus({
  checkout,
  onFulfilled,
}: {
  checkout: CheckoutReturn;
  onFulfilled: (purchase: Purchase) => void;
}) {
  const { api } = useEnv();
  const [message, setMessage] = useState<{
    text: string;
    tone: "success" | "error" | "info";
  } | null>(() =>
    checkout.kind === "success"
      ? { text: WAITING_MESSAGE, tone: "info" }
      : checkout.kind === "cancelled"
        ? { text: CANCELLED_MESSAGE, tone: "info" }
        : null,
  );
  const purchaseId = checkout.kind === "success" ? checkout.purchaseId : null;

  useEffect(() => {
    if (purchaseId === null) {
      return;
    }
    const controller = new AbortController();
    void pollPurchase(
      (signal) =>
        api.json<Purchase>("checkout", `/api/purchases/${encodeURIComponent(purchaseId)}`, {
          signal,
        }),
      { signal: controller.signal },
    ).then((outcome) => {
      if (controller.signal.aborted) {
        return;
      }
      const next = outcomeMessage(outcome);
      if (next) {
        setMessage(next);
      }
      if (outcome.kind === "fulfilled") {
        onFulfilled(outcome.purchase);
      }
    });
    return () => controller.abort();
  }, [api, purchaseId, onFulfilled]);

  // Always present, so screen readers announce the messages that appear in it.
  return (
    <div role="status" aria-live="polite" data-testid="checkout-status" className="status-slot">
      {message ? (
        <p className={`banner banner-${message.tone}`} data-tone={message.tone}>
          {message.text}
        </p>
      ) : null}
    </div>
  );
}
