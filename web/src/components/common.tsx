import { useId, type ReactNode } from "react";

import { describeError } from "../api";

export function Section({
  title,
  children,
  testId,
}: {
  title: string;
  children: ReactNode;
  testId?: string;
}) {
  const id = useId();
  return (
    <section className="panel" aria-labelledby={id} data-testid={testId}>
      <h2 id={id}>{title}</h2>
      {children}
    </section>
  );
}

/**
 * Wide tables scroll inside this wrapper on a phone instead of the page; it is focusable
 * (and named) so a keyboard user can scroll it too.
 */
export function TableWrap({ label, children }: { label: string; children: ReactNode }) {
  return (
    <div className="table-wrap" role="region" aria-label={`${label} (table)`} tabIndex={0}>
      {children}
    </div>
  );
}

export function ErrorText({ error, prefix }: { error: unknown; prefix?: string }) {
  return (
    <p className="error" role="alert">
      {prefix ? `${prefix} ` : ""}
      {describeError(error)}
    </p>
  );
}

export function Loading({ what }: { what: string }) {
  return <p className="muted">Loading {what}…</p>;
}

export function ExternalLink({ href, children }: { href: string; children: ReactNode }) {
  return (
    <a href={href} target="_blank" rel="noopener noreferrer">
      {children}
      <span className="visually-hidden"> (opens in a new tab)</span>
    </a>
  );
}
