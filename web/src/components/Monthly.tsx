import { useId, useState } from "react";

import { describeError } from "../api";
import { saveBlob, statementFilename, statementPath, type StatementFormat } from "../download";
import { useEnv } from "../env";
import { formatCount } from "../format";
import { useLoad } from "../hooks";
import { isMonth, monthLabel, monthOf, monthRange } from "../month";
import { creditsText } from "../money";
import type { UsageSummary } from "../types";
import { ErrorText, Loading, Section, TableWrap } from "./common";

function UsageTable({ month }: { month: string }) {
  const { api } = useEnv();
  const range = monthRange(month);
  const usage = useLoad(
    (signal) =>
      range
        ? api.json<UsageSummary>("metering", `/api/usage?from=${range.from}&to=${range.to}`, {
            signal,
          })
        : Promise.reject(new Error("no month")),
    month,
  );
  if (usage.error) {
    return <ErrorText error={usage.error} prefix="Usage could not be loaded." />;
  }
  if (usage.data === undefined) {
    return <Loading what="usage" />;
  }
  if (usage.data.models.length === 0) {
    return <p className="muted">No AI usage in {monthLabel(month)}.</p>;
  }
  return (
    <TableWrap label={`Usage per model, ${monthLabel(month)}`}>
      <table data-testid="usage-table" aria-busy={usage.loading}>
        <caption>Usage per model, {monthLabel(month)}</caption>
        <thead>
          <tr>
            <th scope="col">Model</th>
            <th scope="col" className="num">
              Calls
            </th>
            <th scope="col" className="num">
              Input tokens
            </th>
            <th scope="col" className="num">
              Output tokens
            </th>
            <th scope="col" className="num">
              Credits
            </th>
          </tr>
        </thead>
        <tbody>
          {usage.data.models.map((row) => (
            <tr key={row.model}>
              <th scope="row" className="wrap">
                {row.model}
              </th>
              <td className="num">{formatCount(row.calls)}</td>
              <td className="num">{formatCount(row.inputTokens)}</td>
              <td className="num">{formatCount(row.outputTokens)}</td>
              <td className="num">{creditsText(row.chargedMillicredits)}</td>
            </tr>
          ))}
        </tbody>
        <tfoot>
          <tr>
            <th scope="row">Total</th>
            <td className="num">
              {formatCount(usage.data.models.reduce((n, r) => n + r.calls, 0))}
            </td>
            <td />
            <td />
            <td className="num">{creditsText(usage.data.totalChargedMillicredits)}</td>
          </tr>
        </tfoot>
      </table>
    </TableWrap>
  );
}

function StatementButtons({ month }: { month: string }) {
  const { api, announce } = useEnv();
  const [busy, setBusy] = useState<StatementFormat | null>(null);
  const [error, setError] = useState<string | null>(null);

  async function download(format: StatementFormat) {
    setBusy(format);
    setError(null);
    try {
      const blob = await api.blob("ledger", statementPath(month, format));
      saveBlob(blob, statementFilename(month, format));
      announce(`Statement for ${monthLabel(month)} downloaded (${format.toUpperCase()}).`);
    } catch (caught) {
      setError(`The statement could not be downloaded. ${describeError(caught)}`);
    } finally {
      setBusy(null);
    }
  }

  return (
    <div>
      <h3>Statement for {monthLabel(month)}</h3>
      <p className="muted small">
        Opening and closing balance, purchases, usage per model, refunds and adjustments.
      </p>
      <div className="actions">
        <button
          type="button"
          disabled={busy !== null}
          aria-busy={busy === "csv"}
          onClick={() => void download("csv")}
          data-testid="statement-csv"
        >
          Download CSV statement
        </button>
        <button
          type="button"
          disabled={busy !== null}
          aria-busy={busy === "pdf"}
          onClick={() => void download("pdf")}
          data-testid="statement-pdf"
        >
          Download PDF statement
        </button>
      </div>
      {error ? (
        <p className="error" role="alert">
          {error}
        </p>
      ) : null}
    </div>
  );
}

export function Monthly() {
  const { now } = useEnv();
  const inputId = useId();
  const hintId = useId();
  const [month, setMonth] = useState(() => monthOf(now()));
  const [draft, setDraft] = useState(month);
  const valid = isMonth(draft);

  return (
    <Section title="Monthly usage and statements" testId="monthly">
      <div className="field">
        <label htmlFor={inputId}>Month</label>
        <input
          id={inputId}
          type="month"
          value={draft}
          max={monthOf(now())}
          aria-describedby={hintId}
          aria-invalid={!valid}
          data-testid="month-input"
          onChange={(event) => {
            setDraft(event.target.value);
            if (isMonth(event.target.value)) {
              setMonth(event.target.value);
            }
          }}
        />
        <p id={hintId} className={valid ? "muted small" : "error small"}>
          {valid ? "Months are counted in UTC." : "Enter a month as YYYY-MM, for example 2025-01."}
        </p>
      </div>
      <UsageTable month={month} />
      <StatementButtons month={month} />
    </Section>
  );
}
