import { useState } from "react";

import { describeError, isApiError, newIdempotencyKey } from "../api";
import { useEnv } from "../env";
import type { Loaded } from "../hooks";
import { formatPrice, formatWholeCredits } from "../money";
import { creditsPagePath } from "../returnTo";
import type { Package, PurchaseCreated } from "../types";
import { ErrorText, ExternalLink, Loading, Section } from "./common";

export const PURCHASES_PAUSED_MESSAGE =
  "Purchases are paused at the moment. Please try again later.";

function isWebUrl(value: string): boolean {
  try {
    const { protocol } = new URL(value);
    return protocol === "https:" || protocol === "http:";
  } catch {
    return false;
  }
}

export function Packages({
  packages,
  purchasesOpen,
  returnTo,
}: {
  packages: Loaded<Package[]>;
  purchasesOpen: boolean;
  returnTo: string | null;
}) {
  const { api, config, leaveTo, announce } = useEnv();
  const [busy, setBusy] = useState<string | null>(null);
  const [refusedAsPaused, setRefusedAsPaused] = useState(false);
  const [error, setError] = useState<string | null>(null);
  const open = purchasesOpen && !refusedAsPaused;

  async function buy(pkg: Package) {
    setBusy(pkg.code);
    setError(null);
    announce(`Starting checkout for ${pkg.name}…`);
    try {
      const created = await api.json<PurchaseCreated>("checkout", "/api/purchases", {
        method: "POST",
        body: { packageCode: pkg.code, returnTo: creditsPagePath(returnTo) },
        headers: { "Idempotency-Key": newIdempotencyKey() },
      });
      if (!isWebUrl(created.checkoutUrl)) {
        throw new Error("checkout answered an unusable checkout address");
      }
      announce("Opening secure checkout…");
      // Stays busy: the page is being left.
      leaveTo(created.checkoutUrl);
    } catch (caught) {
      setBusy(null);
      if (isApiError(caught, "purchases_disabled")) {
        setRefusedAsPaused(true);
        announce(PURCHASES_PAUSED_MESSAGE);
        return;
      }
      const message = `Checkout could not be started. ${describeError(caught)}`;
      setError(message);
    }
  }

  return (
    <Section title="Buy credits">
      {!open ? (
        <p className="notice" data-testid="purchases-paused">
          {PURCHASES_PAUSED_MESSAGE}
        </p>
      ) : null}
      {error ? (
        <p className="error" role="alert">
          {error}
        </p>
      ) : null}
      {packages.data ? (
        <ul className="packages" aria-label="Credit packages">
          {packages.data.map((pkg) => (
            <li key={pkg.code} className="package" data-testid={`package-${pkg.code}`}>
              <h3>{pkg.name}</h3>
              <p className="price">{formatPrice(pkg.priceCents, pkg.currency)}</p>
              <p>{formatWholeCredits(pkg.credits)} credits</p>
              {pkg.bonusCredits > 0 ? (
                <p className="bonus">+ {formatWholeCredits(pkg.bonusCredits)} bonus credits</p>
              ) : (
                <p className="muted">No bonus</p>
              )}
              <p className="muted">
                You get {formatWholeCredits(pkg.credits + pkg.bonusCredits)} credits
              </p>
              <button
                type="button"
                className="button-primary"
                disabled={!open || busy !== null}
                aria-busy={busy === pkg.code}
                onClick={() => void buy(pkg)}
              >
                Buy {pkg.name}
              </button>
            </li>
          ))}
        </ul>
      ) : packages.error ? (
        <ErrorText error={packages.error} prefix="The packages could not be loaded." />
      ) : (
        <Loading what="packages" />
      )}
      <p className="muted small">
        Payment is handled by Stripe Checkout; this site never sees your card.
        {config.pricingUrl ? (
          <>
            {" "}
            <ExternalLink href={config.pricingUrl}>See pricing</ExternalLink>
          </>
        ) : null}
      </p>
    </Section>
  );
}
