import type { Loaded } from "../hooks";
import { approxUsd, creditsText } from "../money";
import type { Balance } from "../types";
import { useEnv } from "../env";
import { ErrorText, ExternalLink, Loading, Section } from "./common";

export const TRUST_MESSAGES = [
  "Credits are prepaid. 1,000 Credits = $1.00",
  "You only pay for actual token usage",
  "USD equivalent is approximate",
] as const;

export function BalancePanel({ balance }: { balance: Loaded<Balance> }) {
  const { config } = useEnv();
  const links = [
    { href: config.pricingUrl, label: "Pricing" },
    { href: config.termsUrl, label: "Terms of service" },
    { href: config.refundPolicyUrl, label: "Refund policy" },
  ].filter((link) => link.href);
  return (
    <Section title="Your balance">
      {balance.data ? (
        <dl className="balance" data-testid="balance">
          <div className="balance-main">
            <dt>Balance</dt>
            <dd>
              <span className="amount" data-testid="balance-credits">
                {creditsText(balance.data.balanceMillicredits)}
              </span>{" "}
              <span className="muted" data-testid="balance-usd">
                {approxUsd(balance.data.balanceMillicredits)}
              </span>
            </dd>
          </div>
          <div>
            <dt>Held for calls in progress</dt>
            <dd data-testid="held-credits">{creditsText(balance.data.heldMillicredits)}</dd>
          </div>
          <div>
            <dt>Available to spend</dt>
            <dd data-testid="available-credits">
              {creditsText(balance.data.availableMillicredits)}{" "}
              <span className="muted">{approxUsd(balance.data.availableMillicredits)}</span>
            </dd>
          </div>
        </dl>
      ) : balance.error ? (
        <ErrorText error={balance.error} prefix="Your balance could not be loaded." />
      ) : (
        <Loading what="your balance" />
      )}
      <ul className="trust" aria-label="How credits work">
        {TRUST_MESSAGES.map((message) => (
          <li key={message}>{message}</li>
        ))}
      </ul>
      {links.length > 0 ? (
        <ul className="links" aria-label="Pricing and policies">
          {links.map((link) => (
            <li key={link.label}>
              <ExternalLink href={link.href}>{link.label}</ExternalLink>
            </li>
          ))}
        </ul>
      ) : null}
    </Section>
  );
}
