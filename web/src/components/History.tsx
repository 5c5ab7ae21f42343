import { formatDateTime, kindLabel } from "../format";
import { usePaged } from "../hooks";
import { creditsText, signedCreditsText } from "../money";
import type { LedgerPage } from "../types";
import { ErrorText, Loading, Section, TableWrap } from "./common";
import { Pager } from "./Pager";

export function History({ refreshKey }: { refreshKey: number }) {
  const { page, cursor, stack, toOlder, toNewer } = usePaged<LedgerPage>(
    "ledger",
    "/api/ledger",
    refreshKey,
  );

  return (
    <Section title="History" testId="history">
      {page.error ? (
        <ErrorText error={page.error} prefix="Your history could not be loaded." />
      ) : page.data === undefined ? (
        <Loading what="your history" />
      ) : page.data.entries.length === 0 && cursor === null ? (
        <p className="muted">No credit movements yet.</p>
      ) : (
        <TableWrap label="Credit history">
          <table data-testid="history-table" aria-busy={page.loading}>
            <caption>Credit movements, newest first</caption>
            <thead>
              <tr>
                <th scope="col">Date</th>
                <th scope="col">Type</th>
                <th scope="col">Details</th>
                <th scope="col" className="num">
                  Amount
                </th>
                <th scope="col" className="num">
                  Balance after
                </th>
              </tr>
            </thead>
            <tbody>
              {page.data.entries.map((entry) => (
                <tr key={entry.id}>
                  <th scope="row" className="nowrap">
                    {formatDateTime(entry.createdAt)}
                  </th>
                  <td>{kindLabel(entry.kind)}</td>
                  <td className="wrap">
                    {entry.kind === "usage" && entry.model ? entry.model : entry.referenceId}
                  </td>
                  <td className={entry.amountMillicredits < 0 ? "num debit" : "num credit"}>
                    {signedCreditsText(entry.amountMillicredits)}
                  </td>
                  <td className="num">{creditsText(entry.balanceAfterMillicredits)}</td>
                </tr>
              ))}
            </tbody>
          </table>
        </TableWrap>
      )}
      <Pager
        stack={stack}
        nextCursor={page.data?.nextCursor}
        noun="entries"
        testIdPrefix="history"
        onOlder={toOlder}
        onNewer={toNewer}
      />
    </Section>
  );
}
